"""OCR reward: does the image show the text quoted in the prompt?

Scoring follows Flow-GRPO's OCR reward: the target is the text between the first pair of double quotes
in the prompt (``A sign that says "HELLO"`` -> ``HELLO``); both the target and the text the OCR model
reads are case-folded with spaces removed; the score is ``1 - min(d, n) / n`` where ``d`` is the
Levenshtein distance and ``n`` the target length, and exactly 1 when the target is contained in what was
read. Prompts without a quoted target score NaN (not applicable). ``metadata[i]["text"]`` overrides the
target.

OCR engine: RapidOCR (``rapidocr-onnxruntime==1.4.4``), which runs the PP-OCRv4 detection and
recognition models through onnxruntime. It is the model family Flow-GRPO uses (PaddleOCR), its ONNX
weights ship inside the wheel (nothing is downloaded; newer rapidocr releases download models, hence the
pin), and it needs no system package, unlike Tesseract. As in Flow-GRPO, the angle classifier is off.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from opgrpo_bench.rewards.base import NAN_REASON, BaseReward, MissingDependencyError, RewardOutput, to_uint8_hwc


def quoted_text(prompt: str) -> str | None:
    """The text between the first pair of double quotes, or None when the prompt has no such pair."""
    parts = prompt.split('"')
    return parts[1] if len(parts) >= 3 else None


def normalize_text(text: str) -> str:
    """Case-fold and remove all whitespace (the comparison Flow-GRPO's OCR reward makes)."""
    return "".join(text.split()).casefold()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_match_score(target: str, read: str) -> float:
    """``1 - min(edit distance, n) / n`` on normalised strings; 1 if the target is contained; NaN if empty."""
    t, r = normalize_text(target), normalize_text(read)
    if not t:
        return float("nan")
    if t in r:
        return 1.0
    return 1.0 - min(edit_distance(t, r), len(t)) / len(t)


class OcrReward(BaseReward):
    """Similarity of the quoted prompt text to what PP-OCRv4 (RapidOCR) reads in the image, in [0, 1]."""

    name = "ocr"
    higher_is_better = True
    range = (0.0, 1.0)
    needs = "CPU; PP-OCRv4 weights inside the rapidocr-onnxruntime wheel (extra 'ocr')"

    def __init__(
        self,
        use_cls: bool = False,
        text_score: float = 0.5,
        num_threads: int = -1,
        det_limit_side_len: int = 960,
        det_limit_type: str = "max",
        **engine_kwargs: Any,
    ):
        """Build the OCR engine.

        Args:
            use_cls: run PP-OCR's 180-degree angle classifier (Flow-GRPO does not).
            text_score: minimum recognition confidence of a text line to be kept.
            num_threads: onnxruntime intra-op threads (-1: onnxruntime's default).
            det_limit_side_len, det_limit_type: detector input sizing. The defaults are PaddleOCR's (the
                longest side is shrunk to 960 when larger), which Flow-GRPO used; RapidOCR's own default
                (shortest side grown to 736) upscales small images and is several times slower.
            **engine_kwargs: passed to ``RapidOCR``.
        """
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependencyError(
                "reward 'ocr' needs rapidocr-onnxruntime: pip install 'opgrpo-bench[ocr]' "
                f"(or pip install rapidocr-onnxruntime==1.4.4) [{exc}]"
            ) from None
        self.use_cls = use_cls
        self.engine = RapidOCR(
            use_cls=use_cls, text_score=text_score, intra_op_num_threads=num_threads,
            det_limit_side_len=det_limit_side_len, det_limit_type=det_limit_type, **engine_kwargs,
        )
        # onnxruntime sessions are thread-safe, but RapidOCR keeps per-call state on the object.
        self._lock = threading.Lock()

    def read(self, image_rgb_uint8: Any) -> str:
        """All text lines the OCR model reads in one RGB uint8 [H, W, 3] image, joined in reading order."""
        bgr = image_rgb_uint8[..., ::-1].copy()  # RapidOCR treats ndarrays as OpenCV BGR
        with self._lock:
            result, _ = self.engine(bgr, use_cls=self.use_cls)
        if not result:
            return ""
        return " ".join(str(line[1]) for line in result)

    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> RewardOutput:
        """OCR each image and compare with its target text (NaN, with a reason, when there is none)."""
        arrays = to_uint8_hwc(images)
        scores, texts, targets, why_nan = [], [], [], []
        for array, prompt, meta in zip(arrays, prompts, metadata):
            target = meta.get("text", quoted_text(prompt))
            targets.append(target)
            if target is None or not normalize_text(str(target)):
                scores.append(float("nan"))
                texts.append(None)
                why_nan.append("the prompt has no text between double quotes to read (and metadata has no 'text')"
                               if target is None else "the target text is empty")
                continue
            read = self.read(array)
            texts.append(read)
            scores.append(text_match_score(str(target), read))
            why_nan.append(None)
        return RewardOutput(torch.tensor(scores, dtype=torch.float32),
                            info={"ocr_text": texts, "target": targets, NAN_REASON: why_nan})
