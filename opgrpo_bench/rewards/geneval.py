"""GenEval (Ghosh et al., 2023): object detection plus rules for objects, counting, colour and position.

Each sample's ``metadata`` is a GenEval record, e.g.::

    {"tag": "position", "include": [{"class": "dog", "count": 1},
                                    {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"}], "exclude": [...]}

Samples without ``include`` score NaN. Two scores are computed for every sample:

- ``correct``: GenEval's strict correctness, 1 when every requirement holds, else 0 (:func:`evaluate`).
  This is what GenEval reports, and what the GenEval tasks evaluate (``TaskSpec.eval_metric="correct"``).
- ``partial``: Flow-GRPO-style partial credit for training (:func:`partial_score`), the mean of one term
  per count, colour, position and exclusion requirement, each in [0, 1]. It is 1 exactly when
  ``correct`` is 1.

``mode="strict"`` (the default) returns ``correct`` as the score; ``mode="partial"`` (the GenEval training
tasks) returns ``partial``. Both are always in ``components``, beside ``requirements_met`` (the fraction
of include/exclude entries that hold strictly).

Pipeline (GenEval's ``evaluate_images.py`` semantics, re-implemented here):

1. Detect instances with a COCO Mask2Former. GenEval uses mmdetection's Swin-S Mask2Former; mmdetection
   does not install beside this stack, so the same architecture is run through transformers
   (``facebook/mask2former-swin-small-coco-instance``). Scores are not bit-identical to GenEval's.
2. Per class: keep detections above 0.3 (0.9 for ``counting`` prompts), best first, at most 16.
3. ``include``: at least ``count`` detections; with ``color``, at least ``count`` of them classified as
   that colour by CLIP ViT-L/14 zero-shot (object pasted on grey #999999 outside its mask, cropped to its
   box, three prompt templates averaged); with ``position: [relation, i]``, every detection relates so to
   every detection of requirement ``i``. ``exclude``: fewer than ``count`` detections.
4. Relations from box centres, ignoring offsets below 0.1 x the summed box sizes: left of / right of /
   above / below when the normalised offset exceeds 0.5 along that axis.

The rules are plain functions (:func:`evaluate`) tested without any model. For a faithful score, run
GenEval's own mmdetection stack elsewhere and reach it through the out-of-process reward server (see
:mod:`opgrpo_bench.rewards.server`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from opgrpo_bench.devices import default_device
from opgrpo_bench.rewards.base import (
    NAN_REASON,
    BaseReward,
    MissingWeightsError,
    RewardOutput,
    to_rgb,
)
from opgrpo_bench.rewards.clip import ClipBackbone, _dtype
from opgrpo_bench.rewards.weights import resolve_dir

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {color} {cls}", "a photo of a {color}-colored {cls}", "a photo of a {color} object")
# Detector label names that GenEval spells differently (COCO / detectron2 names -> GenEval names).
CLASS_ALIASES = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "tvmonitor": "tv", "tv monitor": "tv", "diningtable": "dining table", "pottedplant": "potted plant",
    "sofa": "couch", "motorbike": "motorcycle", "aeroplane": "airplane", "hair dryer": "hair drier",
}


def canonical_class(name: str) -> str:
    """GenEval's spelling of a class name (lower case, aliases resolved)."""
    key = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    return CLASS_ALIASES.get(key, key)


@dataclass
class Detection:
    """One detected instance: box (x1, y1, x2, y2) in pixels, confidence, optional boolean mask [H, W]."""

    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None


def filter_detections(
    raw: dict[str, list[Detection]], tag: str | None, threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
) -> dict[str, list[Detection]]:
    """Per class, detections above the (tag-dependent) threshold, best first, at most ``max_objects``."""
    limit = counting_threshold if tag == "counting" else threshold
    out: dict[str, list[Detection]] = {}
    for cls, dets in raw.items():
        kept = sorted((d for d in dets if d.score > limit), key=lambda d: -d.score)[:max_objects]
        if kept:
            out[canonical_class(cls)] = out.get(canonical_class(cls), []) + kept
    return out


def relative_position(a: Detection, b: Detection, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of ``a`` to ``b`` ("left of", "right of", "above", "below"); empty when they overlap closely."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)  # [obj, corner, xy]
    center_a, center_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


ColorFn = Callable[[str, Sequence[Detection]], list[str]]


def evaluate(
    detections: dict[str, list[Detection]], metadata: dict[str, Any], color_fn: ColorFn | None = None
) -> tuple[bool, float, list[str]]:
    """GenEval's rules on filtered detections.

    Returns:
        (correct, fraction of requirements met, reasons for failures).
    """
    reasons: list[str] = []
    met = total = 0
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = canonical_class(req["class"]), int(req["count"])
        found = detections.get(cls, [])[:count]
        ok = True
        total += 1
        if len(found) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                if color_fn is None:
                    raise ValueError("a colour requirement needs a colour classifier")
                colors = color_fn(cls, found)
                if colors.count(req["color"]) < count:
                    ok = False
                    reasons.append(f"expected {req['color']} {cls}>={count}, found colours {colors}")
            if "position" in req and ok:
                relation, target = req["position"][0], int(req["position"][1])
                target_group = groups[target] if target < len(groups) else None
                if target_group is None:
                    ok = False
                    reasons.append(f"no target for {cls} {relation}")
                elif not all(relation in relative_position(o, t) for o in found for t in target_group):
                    ok = False
                    reasons.append(f"expected {cls} {relation} target {target}")
        met += ok
        groups.append(found if ok else None)
    for req in metadata.get("exclude", []):
        cls, count = canonical_class(req["class"]), int(req["count"])
        total += 1
        if len(detections.get(cls, [])) >= count:
            reasons.append(f"expected {cls}<{count}, found {len(detections.get(cls, []))}")
        else:
            met += 1
    return not reasons, (met / total if total else math.nan), reasons


def _exact_count(cls: str, count: int, metadata: dict[str, Any]) -> bool:
    """True when ``metadata`` asks for exactly ``count`` of ``cls``: an exclude of the same class at count + 1."""
    return any(canonical_class(e["class"]) == cls and int(e["count"]) == count + 1 for e in metadata.get("exclude", []))


def count_term(found: int, asked: int, exact: bool) -> float:
    """Partial credit for ``found`` detections of a class asked ``asked`` times.

    ``exact`` (GenEval's counting prompts: "exactly n"): ``max(0, 1 - |found - asked| / asked)``;
    otherwise ("at least n"): ``min(found, asked) / asked``. ``asked == 0``: 1 when nothing extra is required.
    """
    if asked <= 0:
        return float(found == 0) if exact else 1.0
    if exact:
        return max(0.0, 1.0 - abs(found - asked) / asked)
    return min(found, asked) / asked


def partial_score(
    detections: dict[str, list[Detection]], metadata: dict[str, Any], color_fn: ColorFn | None = None
) -> tuple[float, list[tuple[str, float]]]:
    """Flow-GRPO-style partial GenEval score: the mean of per-requirement terms in [0, 1].

    For include requirement ``i`` (class ``cls``, count ``n``; ``c`` = number of filtered detections of
    ``cls``, ``found`` = the ``min(c, n)`` most confident ones):

    - count: :func:`count_term` ``(c, n, exact)``, where ``exact`` holds when an exclude of ``cls`` with count
      ``n + 1`` exists (GenEval's encoding of "exactly n", used by its counting prompts). That exclude is
      then part of this term and adds no term of its own;
    - colour (when ``color`` is given): the number of ``found`` objects classified as that colour, over ``n``;
    - position (when ``position = [relation, j]``): the fraction of pairs (object of ``found``, object of
      requirement ``j``'s found objects) that stand in ``relation``, over ``n x n_j`` (0 when ``j`` is not
      an earlier requirement).

    Each remaining exclude (``cls``, ``m``) adds ``1[c < m]``. The score is the mean of all terms; NaN when
    there are none. It is 1 exactly when :func:`evaluate` says correct.

    Returns:
        (score, [(term name, value), ...]).
    """
    includes, excludes = metadata.get("include", []), metadata.get("exclude", [])
    terms: list[tuple[str, float]] = []
    groups: list[tuple[list[Detection], int]] = []
    absorbed: set[tuple[str, int]] = set()
    for j, req in enumerate(includes):
        cls, n = canonical_class(req["class"]), int(req["count"])
        dets = detections.get(cls, [])
        exact = _exact_count(cls, n, metadata)
        if exact:
            absorbed.add((cls, n + 1))
        terms.append((f"count {cls} {'==' if exact else '>='}{n}", count_term(len(dets), n, exact)))
        found = dets[:n]
        if "color" in req:
            if color_fn is None:
                raise ValueError("a colour requirement needs a colour classifier")
            hits = color_fn(cls, found).count(req["color"]) if found else 0
            terms.append((f"color {req['color']} {cls}", min(hits, n) / n if n > 0 else 1.0))
        if "position" in req:
            relation, target = req["position"][0], int(req["position"][1])
            value = 0.0
            if 0 <= target < j:
                target_found, target_n = groups[target]
                if n > 0 and target_n > 0:
                    hits = sum(relation in relative_position(o, t) for o in found for t in target_found)
                    value = hits / (n * target_n)
            terms.append((f"position {cls} {relation} {target}", value))
        groups.append((found, n))
    for req in excludes:
        cls, m = canonical_class(req["class"]), int(req["count"])
        if (cls, m) in absorbed:
            continue
        terms.append((f"exclude {cls}<{m}", float(len(detections.get(cls, [])) < m)))
    if not terms:
        return math.nan, terms
    return sum(v for _, v in terms) / len(terms), terms


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight (x1, y1, x2 + 1, y2 + 1) boxes of boolean masks [N, H, W]; zeros for empty masks."""
    n = masks.shape[0]
    boxes = torch.zeros(n, 4)
    for i in range(n):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        if ys.numel():
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return boxes


class Mask2FormerDetector:
    """COCO instance segmentation with transformers' Mask2Former, post-processed as mmdetection does.

    Per image: softmax class scores (no-object dropped), the top ``max_per_image`` (query, class) pairs,
    masks = mask logits > 0 at image resolution, score = class probability x mean mask probability
    inside the mask, box = the mask's bounding box.
    """

    def __init__(self, folder: Any, device: torch.device, dtype: torch.dtype, size: int = 800,
                 max_per_image: int = 100):
        """Load the Mask2Former in ``folder``; ``size`` is the short side of the detector input."""
        from transformers import Mask2FormerForUniversalSegmentation

        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.device, self.dtype, self.size, self.max_per_image = device, dtype, size, max_per_image
        self.labels = {int(k): canonical_class(v) for k, v in self.model.config.id2label.items()}
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> dict[str, list[Detection]]:
        """Detections of one [3, H, W] image in [0, 1], by GenEval class name."""
        h, w = image.shape[-2:]
        scale = self.size / min(h, w)
        nh, nw = round(h * scale), round(w * scale)
        x = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        ph, pw = math.ceil(nh / 32) * 32, math.ceil(nw / 32) * 32
        x = F.pad(x, (0, pw - nw, 0, ph - nh))
        pixel_mask = torch.zeros(1, ph, pw, dtype=torch.long)
        pixel_mask[:, :nh, :nw] = 1
        out = self.model(pixel_values=x.to(self.device, self.dtype), pixel_mask=pixel_mask.to(self.device))
        cls_logits = out.class_queries_logits[0].float()
        mask_logits = out.masks_queries_logits[0].float()[None]  # [1, Q, h', w'] at 1/4 of the padded input
        mask_logits = F.interpolate(mask_logits, size=(ph, pw), mode="bilinear", align_corners=False)
        mask_logits = F.interpolate(mask_logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)[0]
        probs = cls_logits.softmax(-1)[:, :-1]
        num_classes = probs.shape[-1]
        k = min(self.max_per_image, probs.numel())
        scores, flat = probs.flatten().topk(k)
        queries, labels = flat // num_classes, flat % num_classes
        masks = mask_logits[queries] > 0
        mask_prob = (mask_logits[queries].sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
        scores = (scores * mask_prob).cpu()
        masks = masks.cpu()
        boxes = boxes_from_masks(masks)
        result: dict[str, list[Detection]] = {}
        for i in range(k):
            if not masks[i].any():
                continue
            cls = self.labels.get(int(labels[i]), str(int(labels[i])))
            result.setdefault(cls, []).append(Detection(tuple(boxes[i].tolist()), float(scores[i]), masks[i].numpy()))
        return result


class ColorClassifier:
    """GenEval's CLIP zero-shot colour classifier over :data:`COLORS`."""

    def __init__(self, clip: ClipBackbone):
        """Args: clip: the CLIP backbone whose text and image embeddings are compared."""
        self.clip = clip
        self._heads: dict[str, torch.Tensor] = {}

    def head(self, cls: str) -> torch.Tensor:
        """[D, len(COLORS)] normalised mean text embedding of the templates, per colour."""
        if cls not in self._heads:
            columns = []
            for color in COLORS:
                emb = self.clip.text_embeds([t.format(color=color, cls=cls) for t in COLOR_TEMPLATES]).mean(0)
                columns.append(emb / emb.norm())
            self._heads[cls] = torch.stack(columns, dim=1)
        return self._heads[cls]

    def crops(self, image: torch.Tensor, detections: Sequence[Detection]) -> list[torch.Tensor]:
        """Each object on a grey (#999999) background outside its mask, cropped to its box."""
        grey = torch.full_like(image, 0x99 / 255.0)
        out = []
        for det in detections:
            img = image
            if det.mask is not None:
                mask = torch.from_numpy(np.asarray(det.mask, dtype=bool))
                img = torch.where(mask[None], image, grey)
            x1, y1, x2, y2 = (int(round(v)) for v in det.box)
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            out.append(img[:, max(y1, 0) : y2, max(x1, 0) : x2])
        return out

    def __call__(self, image: torch.Tensor, cls: str, detections: Sequence[Detection]) -> list[str]:
        """The colour name (of :data:`COLORS`) of each detection of ``cls`` in ``image`` [3, H, W]."""
        if not detections:
            return []
        embeds = torch.cat([self.clip.image_embeds(c[None]) for c in self.crops(image, detections)])
        return [COLORS[i] for i in (embeds @ self.head(cls).to(embeds.device)).argmax(-1).tolist()]


class GenEvalReward(BaseReward):
    """GenEval score of an image against its GenEval metadata; NaN without metadata.

    ``scores`` is the strict correctness (``mode="strict"``) or the partial score (``mode="partial"``);
    ``components`` always hold ``correct`` (0/1), ``partial`` and ``requirements_met``.
    """

    name = "geneval"
    range = (0.0, 1.0)
    needs = (
        "GPU recommended; metadata per sample; weights: facebook/mask2former-swin-small-coco-instance + "
        "openai/clip-vit-large-patch14 (path=/clip_path= or $OPGRPO_GENEVAL_DETECTOR_PATH/$OPGRPO_GENEVAL_CLIP_PATH)"
    )

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        clip_path: str | os.PathLike[str] | None = None,
        mode: str = "strict",
        device: str | None = None,
        dtype: str | torch.dtype = "float32",
        detector_size: int = 800,
        threshold: float = THRESHOLD,
        counting_threshold: float = COUNTING_THRESHOLD,
    ):
        """Args:
        path: Mask2Former COCO-instance folder or cached repo id.
        clip_path: CLIP folder or cached repo id for colours (default ``openai/clip-vit-large-patch14``).
        mode: ``strict`` (GenEval's 0/1, for evaluation) or ``partial`` (:func:`partial_score`, for
            training); ``components["correct"]`` is the strict 0/1 either way.
        detector_size: short side of the detector input (GenEval's mmdetection pipeline: 800).
        """
        if mode not in ("strict", "partial"):
            raise ValueError(f"geneval mode must be 'strict' or 'partial', got '{mode}'")
        det_dir = resolve_dir(path, env="OPGRPO_GENEVAL_DETECTOR_PATH",
                              default_repo="facebook/mask2former-swin-small-coco-instance",
                              what="reward 'geneval' detector")
        clip_dir = resolve_dir(clip_path, env="OPGRPO_GENEVAL_CLIP_PATH", default_repo="openai/clip-vit-large-patch14",
                               what="reward 'geneval' colour classifier (CLIP)")
        device_t, dtype_t = default_device(device), _dtype(dtype)
        try:
            self.detector = Mask2FormerDetector(det_dir, device_t, dtype_t, size=detector_size)
        except (OSError, ValueError) as exc:
            raise MissingWeightsError(f"reward 'geneval': cannot load a Mask2Former from '{det_dir}' ({exc})") from None
        self.colors = ColorClassifier(ClipBackbone(clip_dir, None, device_t, dtype_t))
        self.mode, self.threshold, self.counting_threshold = mode, threshold, counting_threshold

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        """Detect, then apply :func:`evaluate` and :func:`partial_score` to each sample with metadata."""
        images = to_rgb(images)
        correct, partial, met, reasons, terms, why_nan = [], [], [], [], [], []
        for image, meta in zip(images, metadata):
            if not meta.get("include"):
                for column in (correct, partial, met):
                    column.append(math.nan)
                reasons.append(None)
                terms.append(None)
                why_nan.append("no GenEval metadata: the sample's metadata has no 'include' list")
                continue
            dets = filter_detections(self.detector(image), meta.get("tag"), self.threshold, self.counting_threshold)
            cache: dict[tuple[str, tuple[int, ...]], list[str]] = {}

            def color_fn(cls: str, found: Sequence[Detection], image: torch.Tensor = image,
                         cache: dict[tuple[str, tuple[int, ...]], list[str]] = cache) -> list[str]:
                """The colours of ``found``, classified once per object set."""
                key = (cls, tuple(id(d) for d in found))  # both rules ask about the same objects: classify once
                if key not in cache:
                    cache[key] = self.colors(image, cls, found)
                return cache[key]

            ok, frac, why = evaluate(dets, meta, color_fn)
            value, parts = partial_score(dets, meta, color_fn)
            correct.append(float(ok))
            partial.append(value)
            met.append(frac)
            reasons.append(why)
            terms.append([[name, round(v, 6)] for name, v in parts])
            why_nan.append(None)
        correct_t = torch.tensor(correct, dtype=torch.float32)
        partial_t = torch.tensor(partial, dtype=torch.float32)
        scores = correct_t if self.mode == "strict" else partial_t
        return RewardOutput(
            scores, components={"correct": correct_t, "partial": partial_t,
                                "requirements_met": torch.tensor(met, dtype=torch.float32)},
            info={"reasons": reasons, "partial_terms": terms, NAN_REASON: why_nan},
        )
