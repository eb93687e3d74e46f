"""Reward models. Importing this package registers the built-in rewards lazily (no heavy imports).

Each entry's ``meta`` holds ``needs`` (one line for ``opgrpo-bench list rewards``) and the structured
``device`` ("CPU" or "GPU recommended"), ``weights`` (what files, or "none") and ``extra`` (the
optional-dependency extra to install, or None).
"""

from typing import Any

from opgrpo_bench.registry import REWARDS

_BASE_NAMES = ("BaseReward", "MissingDependencyError", "MissingWeightsError", "Reward", "RewardOutput",
               "RewardUnavailableError")


def __getattr__(name: str) -> Any:
    """The reward protocol's names, imported on first use (they need torch; listing rewards does not)."""
    if name in _BASE_NAMES:
        from opgrpo_bench.rewards import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register(name: str, target: str, description: str, device: str, weights: str, extra: str | None = None,
              aliases: tuple[str, ...] = ()) -> None:
    needs = f"{device}; weights: {weights}" + (f"; extra: {extra}" if extra else "")
    REWARDS.register(name, f"opgrpo_bench.rewards.{target}", aliases=aliases, description=description,
                     needs=needs, device=device, weights=weights, extra=extra)


_SHIPPED = "shipped in the package (assets/digits-v1)"
_register("digit-classifier", "digits:DigitClassifierReward",
          "probability of the prompted digit under the digits-v1 classifier", "CPU", _SHIPPED, aliases=("digits",))
_register("digit-pair", "digits:DigitPairReward", "1 if the digits-v1 classifier reads both halves of an 8x16 image "
          "as the prompted left/right digits, else 0", "CPU", _SHIPPED)
_register("digit-number", "digits:DigitNumberReward", "1 - edit distance / length between the prompted number and "
          "the digits the digits-v1 classifier reads off an 8x(8k) image", "CPU", _SHIPPED)
_register("digit-video", "digits:DigitVideoReward", "mean over frames of p(prompted digit) at the digit's position x "
          "how well it moves the prompted way (left/right), videos [B, F, 1, 8, W]", "CPU", _SHIPPED)
_register("ocr", "ocr:OcrReward", "similarity of the prompt's quoted text to what PP-OCRv4 reads (Flow-GRPO)",
          "CPU", "PP-OCRv4 inside the rapidocr-onnxruntime wheel", "ocr", aliases=("text-rendering",))
_register("jpeg-compressibility", "jpeg:JpegCompressibility", "minus the JPEG size in kB at quality 95 (DDPO)",
          "CPU", "none", aliases=("compressibility",))
_register("jpeg-incompressibility", "jpeg:JpegIncompressibility", "JPEG size in kB at quality 95 (DDPO)",
          "CPU", "none", aliases=("incompressibility",))
_register("video", "video:FrameWiseReward", "any image reward applied per frame, aggregated (mean by default)",
          "as the wrapped reward", "as the wrapped reward", aliases=("frame-wise",))
_register("video-ocr", "video:VideoOcrReward", "OCR reward on every frame, mean over frames (Wan2.1 task)",
          "CPU", "PP-OCRv4 inside the rapidocr-onnxruntime wheel", "ocr")
_register("composite", "composite:CompositeReward", "weighted sum of rewards; optional per-reward normalisation",
          "as its parts", "as its parts")
_register("pickscore", "clip:PickScoreReward", "PickScore v1 (CLIP ViT-H-14 fine-tuned on Pick-a-Pic)",
          "GPU recommended", "yuvalkirstain/PickScore_v1 + laion/CLIP-ViT-H-14-laion2B-s32B-b79K tokenizer "
          "(path=, $OPGRPO_PICKSCORE_PATH)")
_register("clipscore", "clip:ClipScoreReward", "CLIPScore 2.5*max(cos,0) under CLIP ViT-L/14",
          "GPU recommended", "openai/clip-vit-large-patch14 (path=, $OPGRPO_CLIPSCORE_PATH)", aliases=("clip-score",))
_register("aesthetic", "clip:AestheticReward", "LAION aesthetic predictor on CLIP ViT-L/14",
          "GPU recommended", "openai/clip-vit-large-patch14 + LAION MLP .pth (mlp_path=, $OPGRPO_AESTHETIC_MLP_PATH)",
          aliases=("laion-aesthetic",))
_register("hpsv2", "hpsv2:HPSv2Reward", "HPSv2.1 human preference score (OpenCLIP ViT-H-14, via transformers)",
          "GPU recommended", "xswu/HPSv2 HPS_v2.1_compressed.pt + ViT-H-14 tokenizer (path=, $OPGRPO_HPSV2_PATH)",
          aliases=("hps",))
_register("image-reward", "image_reward:ImageRewardReward", "ImageReward v1.0 (BLIP, via transformers)",
          "GPU recommended", "THUDM/ImageReward ImageReward.pt + bert-base-uncased tokenizer "
          "(path=, $OPGRPO_IMAGEREWARD_PATH)", aliases=("imagereward",))
_register("geneval", "geneval:GenEvalReward", "GenEval rules (objects, counting, colour, position) on Mask2Former",
          "GPU recommended", "facebook/mask2former-swin-small-coco-instance + openai/clip-vit-large-patch14 "
          "(path=, $OPGRPO_GENEVAL_DETECTOR_PATH)")
_register("threshold", "threshold:ThresholdReward", "success = 1[wrapped reward >= threshold] (sparse rewards)",
          "as the wrapped reward", "as the wrapped reward", aliases=("binary",))
_register("remote", "server:RemoteReward", "a reward scored by a reward server on 127.0.0.1",
          "as the served reward", "on the server's side")

__all__ = [
    "BaseReward", "MissingDependencyError", "MissingWeightsError", "Reward", "RewardOutput",
    "RewardUnavailableError", "REWARDS",
]
