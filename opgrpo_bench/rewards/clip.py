"""CLIP-based rewards: ``clipscore``, ``pickscore`` and ``aesthetic`` (LAION predictor on CLIP ViT-L/14).

All three load a transformers ``CLIPModel`` from a local folder or the Hugging Face cache (never the
network, see :mod:`opgrpo_bench.rewards.weights`). Images are preprocessed in torch, on the reward's
device, as CLIP's image processor does (bicubic resize of the short side, centre crop, normalise),
with the sizes and statistics read from the folder's ``preprocessor_config.json``; the resize uses
antialiasing, which matches PIL's bicubic filter closely but not bit for bit.

- ``clipscore``: CLIP-S of Hessel et al. (2021), ``2.5 * max(cos(image, text), 0)`` on
  ``openai/clip-vit-large-patch14``.
- ``pickscore``: PickScore v1 (Kirstain et al., 2023), ``logit_scale.exp() * cos(image, text)`` on
  ``yuvalkirstain/PickScore_v1`` with the tokenizer and image statistics of
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; ``normalize=True`` divides by 26 as Flow-GRPO does.
- ``aesthetic``: the LAION improved aesthetic predictor: an MLP on the L2-normalised CLIP ViT-L/14 image
  embedding (as DDPO uses it), weights ``sac+logos+ava1-l14-linearMSE.pth`` or TRL's copy
  ``trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from opgrpo_bench.devices import default_device
from opgrpo_bench.rewards.base import BaseReward, MissingWeightsError, RewardOutput, to_rgb
from opgrpo_bench.rewards.weights import resolve_dir, resolve_file

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


class ImagePreprocessor:
    """CLIP-style preprocessing of [B, 3, H, W] tensors in [0, 1]: resize short side, centre crop, normalise."""

    def __init__(
        self,
        size: int = 224,
        crop: int | tuple[int, int] = 224,
        mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
        std: tuple[float, ...] = OPENAI_CLIP_STD,
        resize_mode: str = "shortest_edge",
    ):
        self.size = size
        self.crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.resize_mode = resize_mode

    @classmethod
    def from_folder(cls, folder: Path | None, **defaults: Any) -> "ImagePreprocessor":
        """Read ``preprocessor_config.json`` (transformers' image-processor format) when present."""
        cfg_path = folder / "preprocessor_config.json" if folder is not None else None
        if cfg_path is None or not cfg_path.is_file():
            return cls(**defaults)
        cfg = json.loads(cfg_path.read_text())
        size = cfg.get("size", defaults.get("size", 224))
        resize_mode = "shortest_edge"
        if isinstance(size, dict):
            if "shortest_edge" in size:
                size = size["shortest_edge"]
            else:
                size, resize_mode = size.get("height", 224), "square"
        crop = cfg.get("crop_size", size) if cfg.get("do_center_crop", True) else size
        if isinstance(crop, dict):
            crop = (crop.get("height", size), crop.get("width", size))
        return cls(
            size=int(size),
            crop=crop,
            mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
            resize_mode=resize_mode,
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = to_rgb(images)
        h, w = images.shape[-2:]
        if self.resize_mode == "square":
            new_hw = (self.size, self.size)
        else:
            scale = self.size / min(h, w)
            new_hw = (max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale)))
        if (h, w) != new_hw:
            images = F.interpolate(images, size=new_hw, mode="bicubic", align_corners=False, antialias=True)
        top = (images.shape[-2] - self.crop[0]) // 2
        left = (images.shape[-1] - self.crop[1]) // 2
        images = images[..., top : top + self.crop[0], left : left + self.crop[1]].clamp(0, 1)
        mean = self.mean.to(images.device, images.dtype).view(1, -1, 1, 1)
        std = self.std.to(images.device, images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a pooled output object in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


class ClipBackbone:
    """A CLIPModel, its tokenizer and its image preprocessing, loaded from local folders only."""

    def __init__(self, model_dir: Path, processor_dir: Path | None, device: torch.device, dtype: torch.dtype):
        from transformers import AutoTokenizer, CLIPModel

        self.device, self.dtype = device, dtype
        self.model = CLIPModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        tok_dir = model_dir if has_tokenizer(model_dir) or processor_dir is None else processor_dir
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        pre_dir = model_dir if (model_dir / "preprocessor_config.json").is_file() or processor_dir is None else processor_dir
        self.preprocess = ImagePreprocessor.from_folder(pre_dir)
        self.max_length = min(int(getattr(self.model.config.text_config, "max_position_embeddings", 77)), 77)

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image embeddings [B, D] (float32)."""
        pixels = self.preprocess(images.to(self.device, torch.float32)).to(self.dtype)
        emb = _features(self.model.get_image_features(pixel_values=pixels)).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings [B, D] (float32)."""
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        emb = _features(
            self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        ).float()
        return emb / emb.norm(dim=-1, keepdim=True)


class _ClipReward(BaseReward):
    """Shared construction: resolve folders offline, load the backbone, score in chunks."""

    default_repo: str = ""
    env: str = ""
    default_processor_repo: str | None = None
    processor_env: str | None = None

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        processor_path: str | os.PathLike[str] | None = None,
        device: str | None = None,
        dtype: str | torch.dtype = "float32",
        batch_size: int = 32,
    ):
        model_dir = resolve_dir(path, env=self.env, default_repo=self.default_repo, what=f"reward '{self.name}'",
                                required=("config.json",))
        processor_dir = None
        if self.default_processor_repo and not (has_tokenizer(model_dir) or processor_path is not None):
            processor_dir = resolve_dir(
                processor_path, env=self.processor_env or "", default_repo=self.default_processor_repo,
                what=f"reward '{self.name}' tokenizer/processor", required=("tokenizer_config.json",),
            )
        elif processor_path is not None:
            processor_dir = resolve_dir(processor_path, env=self.processor_env or "", default_repo="",
                                        what=f"reward '{self.name}' tokenizer/processor", required=())
        self.clip = ClipBackbone(model_dir, processor_dir, default_device(device), _dtype(dtype))
        self.batch_size = batch_size

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]


class ClipScoreReward(_ClipReward):
    """CLIPScore (Hessel et al.): 2.5 * max(cosine(image, prompt), 0) under CLIP ViT-L/14."""

    name = "clipscore"
    range = (0.0, 2.5)
    needs = "GPU recommended; weights: openai/clip-vit-large-patch14 (path= or $OPGRPO_CLIPSCORE_PATH)"
    default_repo = "openai/clip-vit-large-patch14"
    env = "OPGRPO_CLIPSCORE_PATH"

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        cos = torch.cat([
            (self.clip.image_embeds(images[s]) * self.clip.text_embeds(prompts[s])).sum(-1)
            for s in self._chunks(len(prompts))
        ])
        return RewardOutput(2.5 * cos.clamp(min=0), components={"cosine": cos})


class PickScoreReward(_ClipReward):
    """PickScore v1: logit_scale * cosine(image, prompt) (about 18-24 for good images; /26 with normalize)."""

    name = "pickscore"
    range = (-100.0, 100.0)  # logit_scale is capped at 100
    needs = (
        "GPU recommended; weights: yuvalkirstain/PickScore_v1 + tokenizer laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
        "(path=/processor_path= or $OPGRPO_PICKSCORE_PATH/$OPGRPO_PICKSCORE_PROCESSOR_PATH)"
    )
    default_repo = "yuvalkirstain/PickScore_v1"
    env = "OPGRPO_PICKSCORE_PATH"
    default_processor_repo = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    processor_env = "OPGRPO_PICKSCORE_PROCESSOR_PATH"

    def __init__(self, normalize: bool = False, **kwargs: Any):
        """Args: normalize: divide by 26 (Flow-GRPO's training scale); others as for every CLIP reward."""
        super().__init__(**kwargs)
        self.normalize = normalize
        if normalize:
            self.range = (-100.0 / 26.0, 100.0 / 26.0)  # type: ignore[misc]

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        scale = self.clip.model.logit_scale.exp().float().item()
        cos = torch.cat([
            (self.clip.image_embeds(images[s]) * self.clip.text_embeds(prompts[s])).sum(-1)
            for s in self._chunks(len(prompts))
        ])
        scores = scale * cos / (26.0 if self.normalize else 1.0)
        return RewardOutput(scores, components={"cosine": cos})


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head (ImageReward reuses the same layer layout).

    Linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout between the first four and no
    non-linearity, as in the released predictor; parameter names ``layers.{0,2,4,6,7}.*`` match its file.
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt``/``.safetensors`` state dict safely (tensors only, no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingWeightsError(f"{what}: cannot read '{path}' as a state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise MissingWeightsError(f"{what}: '{path}' does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class AestheticReward(_ClipReward):
    """LAION aesthetic predictor on CLIP ViT-L/14 image embeddings (about 1-10; higher is prettier)."""

    name = "aesthetic"
    range = (-math.inf, math.inf)
    needs = (
        "GPU recommended; weights: openai/clip-vit-large-patch14 + LAION MLP sac+logos+ava1-l14-linearMSE.pth "
        "(path=/mlp_path= or $OPGRPO_AESTHETIC_CLIP_PATH/$OPGRPO_AESTHETIC_MLP_PATH)"
    )
    default_repo = "openai/clip-vit-large-patch14"
    env = "OPGRPO_AESTHETIC_CLIP_PATH"
    mlp_repo = "trl-lib/ddpo-aesthetic-predictor"
    mlp_file = "aesthetic-model.pth"
    mlp_env = "OPGRPO_AESTHETIC_MLP_PATH"

    def __init__(self, mlp_path: str | os.PathLike[str] | None = None, **kwargs: Any):
        """Args: mlp_path: the predictor's ``.pth`` (or a folder holding ``aesthetic-model.pth``)."""
        mlp_file = resolve_file(mlp_path, env=self.mlp_env, default_repo=self.mlp_repo, filename=self.mlp_file,
                                what="reward 'aesthetic' MLP")
        super().__init__(**kwargs)
        dim = int(self.clip.model.config.projection_dim)
        self.mlp = AestheticMLP(dim)
        state = load_state_dict_file(mlp_file, "reward 'aesthetic' MLP")
        try:
            self.mlp.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise MissingWeightsError(f"reward 'aesthetic' MLP: '{mlp_file}' does not match the predictor ({first})") from None
        self.mlp.to(self.clip.device).eval()

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        scores = torch.cat([self.mlp(self.clip.image_embeds(images[s])).squeeze(-1) for s in self._chunks(len(prompts))])
        return RewardOutput(scores.float())
