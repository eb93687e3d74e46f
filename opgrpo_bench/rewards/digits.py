"""Rewards of the CPU tasks, both read by one classifier of 8x8 digits.

- ``digit-classifier`` (``digits-v1``): probability of the prompted digit.
- ``digit-pair`` (``digits-pair-v1``): 1 when both halves of an 8x16 image show the prompted digits in the
  prompted order, else 0.
- ``digit-number`` (``digits-number-v1``): an OCR-like string match of the digits read off an 8x(8k) image
  against the prompted number, ``1 - edit_distance / length``.
- ``digit-video`` (``digits-video-v1``): videos of a digit moving left or right; the mean over frames of
  p(prompted digit) read at the digit's position in each frame, times how well its position moves the
  prompted way (:class:`DigitVideoReward`).

The classifier is a small MLP trained by the project on scikit-learn's bundled handwritten digits
(:func:`opgrpo_bench.pretraining.classifiers.train_digit_classifier`; weights shipped in
``opgrpo_bench/assets/digits-v1``). Its held-out accuracy is recorded beside the weights.

Every reward here also reads with the **gold** classifier (``classifier="gold"``): a small CNN (a different
architecture) trained on the *other* split of the same data (the 20% the reward classifier never saw,
:func:`opgrpo_bench.pretraining.classifiers.train_gold_classifier`). The tasks evaluate it beside the reward
and never train on it, so a policy that learns the reward classifier's quirks instead of the digits shows up
as a widening gap between the eval score and the gold score.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from opgrpo_bench.backbones.digits import DIGITS_ASSETS
from opgrpo_bench.rewards.base import NAN_REASON, RewardOutput

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ASSETS = DIGITS_ASSETS
"""Where the classifiers' weights are shipped (the digits-v1 assets folder)."""


class DigitClassifier(nn.Module):
    """MLP on 8x8 grey images in [0, 1] ([B, 1, 8, 8] or [B, 64]) -> logits [B, 10]."""

    def __init__(self, hidden: int = 256):
        """Args: hidden: width of the hidden layer."""
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] of images [B, 1, 8, 8] or [B, 64]."""
        return self.net(images.reshape(images.shape[0], -1).float())


class GoldDigitClassifier(nn.Module):
    """Small CNN on 8x8 grey images in [0, 1] ([B, 1, 8, 8] or [B, 64]) -> logits [B, 10].

    Two 3x3 convolutions and a 2x2 max-pool, then a linear layer: translation structure the reward's
    MLP lacks, so the two classifiers fail on different images.
    """

    def __init__(self, channels: int = 16):
        """Args: channels: width of the first convolution (the second has twice as many)."""
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * channels * 16, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] of images [B, 1, 8, 8] or [B, 64]."""
        return self.net(images.reshape(images.shape[0], 1, 8, 8).float())


CLASSIFIERS = {"reward": (DigitClassifier, "classifier"), "gold": (GoldDigitClassifier, "gold_classifier")}
"""``classifier=`` of the digit rewards -> (module class, file stem in the weights folder)."""


def load_classifier(path: str | Path | None = None, classifier: str = "reward") -> tuple[nn.Module, dict]:
    """(frozen classifier in eval mode, its info JSON) from ``path`` (default: the shipped digits-v1 folder)."""
    from safetensors.torch import load_file

    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {sorted(CLASSIFIERS)}, not {classifier!r}")
    cls, stem = CLASSIFIERS[classifier]
    folder = Path(path) if path else ASSETS
    model = cls()
    model.load_state_dict(load_file(folder / f"{stem}.safetensors"))
    model.eval().requires_grad_(False)
    info_file = folder / f"{stem}.json"
    return model, json.loads(info_file.read_text()) if info_file.exists() else {}


def prompted_digit(prompt: str, metadata: dict[str, Any] | None = None) -> int | None:
    """The digit a prompt asks for (metadata ``digit`` first, else the first numeral or number word)."""
    if metadata and "digit" in metadata:
        return int(metadata["digit"])
    match = re.search(r"\b(\d)\b|\b(" + "|".join(DIGIT_WORDS) + r")\b", prompt.lower())
    if not match:
        return None
    return int(match.group(1)) if match.group(1) else DIGIT_WORDS.index(match.group(2))


class DigitClassifierReward:
    """P(prompted digit | image) under the digits-v1 classifier; NaN when the prompt names no digit."""

    name: ClassVar[str] = "digit-classifier"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    input_shape: ClassVar[tuple[int, int, int]] = (1, 8, 8)
    """[C, H, W] of the images it scores (the digits-v1 task's size); ``opgrpo-bench score`` checks it."""

    def __init__(self, path: str | Path | None = None, classifier: str = "reward"):
        """Args: path: folder with the classifiers' safetensors (default: the weights shipped in the package);
        classifier: ``"reward"`` (the MLP the tasks train on) or ``"gold"`` (the held-out CNN)."""
        self.model, self.info = load_classifier(path, classifier)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> RewardOutput:
        """``images`` [B, 1, 8, 8] in [0, 1] -> scores [B] = p(prompted digit), plus ``correct`` (argmax hit)."""
        if images.shape[1:].numel() != 64:
            raise ValueError(f"digit-classifier expects [B, 1, 8, 8] images, got {tuple(images.shape)}")
        metadata = metadata or [{}] * len(prompts)
        probs = self.model(images).softmax(-1)
        labels = [prompted_digit(p, m) for p, m in zip(prompts, metadata)]
        scores = torch.full((len(prompts),), float("nan"))
        correct = torch.full((len(prompts),), float("nan"))
        why_nan: list[str | None] = []
        for i, label in enumerate(labels):
            if label is not None:
                scores[i] = probs[i, label]
                correct[i] = float(probs[i].argmax().item() == label)
            why_nan.append(None if label is not None else
                           "the prompt names no digit (0-9 or zero..nine) and metadata has no 'digit'")
        return RewardOutput(scores=scores, components={"correct": correct}, info={NAN_REASON: why_nan})


_DIGIT = r"(\d|" + "|".join(DIGIT_WORDS) + r")"
_PAIR_RE = re.compile(r"\b" + _DIGIT + r"\s+(left|right)\s+of\s+(?:an?\s+|the\s+)?" + _DIGIT + r"\b")


def _digit_value(token: str) -> int:
    return int(token) if token.isdigit() else DIGIT_WORDS.index(token)


def prompted_pair(prompt: str, metadata: dict[str, Any] | None = None) -> tuple[int, int] | None:
    """(left digit, right digit) a prompt asks for, or None when it names no such pair.

    Metadata ``left``/``right`` first; else ``"<X> left of <Y>"`` means X on the left, ``"<X> right of <Y>"``
    means X on the right (numerals or number words, e.g. "a 3 left of a 7", "a seven right of a three").
    """
    if metadata and "left" in metadata and "right" in metadata:
        return int(metadata["left"]), int(metadata["right"])
    match = _PAIR_RE.search(prompt.lower())
    if not match:
        return None
    first, side, second = _digit_value(match.group(1)), match.group(2), _digit_value(match.group(3))
    return (first, second) if side == "left" else (second, first)


class DigitPairReward:
    """Binary success of an 8x16 two-digit image under the digits-v1 classifier; NaN for unparsable prompts.

    Score 1.0 when the classifier's argmax on the left 8x8 half is the prompted left digit and on the right
    half the prompted right digit, else 0.0. Components: ``p_left``, ``p_right`` (probability of each prompted
    digit on its half) and ``p_both`` (their product), a dense diagnostic of how close a failure was.
    Images with non-finite pixels score NaN (nothing to read), without touching the other rows.
    """

    name: ClassVar[str] = "digit-pair"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    input_shape: ClassVar[tuple[int, int, int]] = (1, 8, 16)
    """[C, H, W] of the images it scores (the digits-pair-v1 task's size); ``opgrpo-bench score`` checks it."""

    def __init__(self, path: str | Path | None = None, classifier: str = "reward"):
        """Args: path: folder of the digits-v1 classifiers (default: the weights shipped in the package);
        classifier: ``"reward"`` or ``"gold"`` (see :class:`DigitClassifierReward`)."""
        self.classifier = DigitClassifierReward(path, classifier)
        self.model, self.info = self.classifier.model, self.classifier.info

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> RewardOutput:
        """``images`` [B, 1, 8, 16] in [0, 1] -> scores [B] in {0, 1} (NaN: no pair in the prompt)."""
        if images.shape[-2:] != (8, 16):
            raise ValueError(f"digit-pair expects [B, 1, 8, 16] images, got {tuple(images.shape)}")
        metadata = metadata or [{}] * len(prompts)
        n = len(prompts)
        halves = torch.cat([images[..., :8], images[..., 8:]]).float()  # [2B, 1, 8, 8]: lefts then rights
        # One row at a time: a sample's score must not depend on its batch (BLAS may block the matmul
        # differently for other batch sizes, which can flip an argmax tie). The MLP is tiny, so this is cheap.
        probs = torch.cat([self.model(halves[i : i + 1]) for i in range(2 * n)]).softmax(-1)
        finite = torch.isfinite(halves.reshape(2 * n, -1)).all(-1)
        scores, p_left, p_right = (torch.full((n,), float("nan")) for _ in range(3))
        why_nan: list[str | None] = [None] * n
        for i, (prompt, meta) in enumerate(zip(prompts, metadata)):
            pair = prompted_pair(prompt, meta)
            if pair is None:
                why_nan[i] = ("the prompt names no digit pair ('<X> left of <Y>' or '<X> right of <Y>') and "
                              "metadata has no 'left'/'right'")
                continue
            if not (finite[i] and finite[n + i]):
                why_nan[i] = "the image has non-finite pixels"
                continue
            left, right = pair
            pl, pr = probs[i], probs[n + i]
            p_left[i], p_right[i] = pl[left], pr[right]
            scores[i] = float(int(pl.argmax()) == left and int(pr.argmax()) == right)
        return RewardOutput(scores=scores, components={"p_left": p_left, "p_right": p_right,
                                                       "p_both": p_left * p_right}, info={NAN_REASON: why_nan})


_NUMBER_RE = re.compile(r"\d+")


def prompted_number(prompt: str, metadata: dict[str, Any] | None = None) -> str | None:
    """The digit string a prompt asks for: metadata ``number`` first, else the first run of numerals.

    A string, so that leading zeros count (``"the number 042"`` -> ``"042"``); None when there is none.
    """
    if metadata and "number" in metadata:
        return str(metadata["number"])
    match = _NUMBER_RE.search(prompt)
    return match.group(0) if match else None


class DigitNumberReward:
    """How well an 8x(8k) image renders the prompted number, read digit by digit by the digits-v1 classifier.

    A miniature of Flow-GRPO's OCR reward. The image is cut into k 8x8 positions, left to right; the
    classifier's argmax at each position gives the read string (always k characters, e.g. ``"374"`` from
    an 8x24 image). With ``n`` the length of the prompted string and ``d`` the Levenshtein distance between
    the two strings, the score is ``1 - min(d, n) / n`` (Flow-GRPO's formula): 1 for the right number,
    2/3 for a 3-digit number with one wrong digit, 0 when nothing matches.

    Components:
        success: 1.0 when the read string is exactly the prompted one, else 0.0 (the strict metric).
        char_acc: the fraction of the prompted string's positions read as the prompted digit (positional;
            positions beyond the image count as wrong).
        p_digits: the mean classifier probability of the prompted digit over those positions (a dense
            diagnostic of how close a failure was).

    The number comes from metadata ``number`` (a string such as ``"042"``) or else the prompt's first run of
    numerals; prompts with neither score NaN, as do images with non-finite pixels (other rows untouched).
    """

    name: ClassVar[str] = "digit-number"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    input_shape: ClassVar[tuple[int, int, int]] = (1, 8, 24)
    """[C, H, W] of the images of the digits-number-v1 task (``opgrpo-bench score`` checks it); the reward
    itself reads any [B, 1, 8, 8k]."""

    def __init__(self, path: str | Path | None = None, classifier: str = "reward"):
        """Args: path: folder of the digits-v1 classifiers (default: the weights shipped in the package);
        classifier: ``"reward"`` or ``"gold"`` (see :class:`DigitClassifierReward`)."""
        self.classifier = DigitClassifierReward(path, classifier)
        self.model, self.info = self.classifier.model, self.classifier.info

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Images [B, 1, 8, 8k] in [0, 1] -> (read strings, probabilities [B, k, 10])."""
        if images.dim() != 4 or images.shape[-2] != 8 or images.shape[-1] % 8 or images.shape[-1] == 0:
            raise ValueError(f"digit-number expects [B, 1, 8, 8k] images, got {tuple(images.shape)}")
        b, k = images.shape[0], images.shape[-1] // 8
        cells = images.float().reshape(b, images.shape[1], 8, k, 8).permute(0, 3, 1, 2, 4).reshape(b * k, -1)
        # One cell at a time: a sample's score must not depend on its batch (see DigitPairReward).
        probs = torch.cat([self.model(cells[i : i + 1]) for i in range(b * k)]).softmax(-1).reshape(b, k, 10)
        reads = ["".join(str(int(d)) for d in row) for row in probs.argmax(-1)]
        return reads, probs

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> RewardOutput:
        """``images`` [B, 1, 8, 8k] in [0, 1] -> scores [B] in [0, 1] (NaN: no number in the prompt)."""
        from opgrpo_bench.rewards.ocr import edit_distance

        reads, probs = self.read(images)
        metadata = metadata or [{}] * len(prompts)
        n = len(prompts)
        finite = torch.isfinite(images.reshape(n, -1)).all(-1)
        scores, success, char_acc, p_digits = (torch.full((n,), float("nan")) for _ in range(4))
        why_nan: list[str | None] = [None] * n
        for i, (prompt, meta) in enumerate(zip(prompts, metadata)):
            target = prompted_number(prompt, meta)
            if not target or not target.isdigit():
                why_nan[i] = "the prompt names no number (a run of numerals) and metadata has no 'number'"
                continue
            if not finite[i]:
                why_nan[i] = "the image has non-finite pixels"
                continue
            read, m = reads[i], len(target)
            scores[i] = 1.0 - min(edit_distance(read, target), m) / m
            success[i] = float(read == target)
            hits = [j < len(read) and read[j] == c for j, c in enumerate(target)]
            char_acc[i] = sum(hits) / m
            p_digits[i] = sum(float(probs[i, j, int(c)]) for j, c in enumerate(target) if j < len(read)) / m
        return RewardOutput(scores=scores, components={"success": success, "char_acc": char_acc,
                                                       "p_digits": p_digits}, info={NAN_REASON: why_nan})


DIRECTIONS = ("left", "right")
"""The directions of ``digit-video`` prompts; ``right`` is towards larger column indices."""
_DIRECTION_RE = re.compile(r"\b(left|right)\b")


def prompted_direction(prompt: str, metadata: dict[str, Any] | None = None) -> str | None:
    """``"left"`` or ``"right"``: metadata ``direction`` first, else the last of those words in the prompt."""
    if metadata and "direction" in metadata:
        direction = str(metadata["direction"])
        return direction if direction in DIRECTIONS else None
    found = _DIRECTION_RE.findall(prompt.lower())
    return found[-1] if found else None


class DigitVideoReward:
    """How well a video [B, F, 1, 8, W] shows the prompted digit moving the prompted way (``digits-video-v1``).

    Each frame ``X_f`` (8 x W pixels in [0, 1], W >= 8) is read at the digit's position:

    - position: the column centre of mass ``c_f = sum_j j * colsum_j(X_f) / sum(X_f)`` (columns 0..W-1);
    - digit: the digits-v1 classifier reads the 8x8 window at that position, left edge
      ``x_f = clamp(c_f - 3.5, 0, W - 8)`` (an 8x8 digit's own centre of mass is at 3.5 +- 0.3), linearly
      interpolated between the two whole-pixel windows around it: with ``l = floor(x_f)``, ``a = x_f - l``,
      ``p_f = (1 - a) p(prompted digit | X_f[:, l:l+8]) + a p(prompted digit | X_f[:, l+1:l+9])``.
      A blank frame (no ink) has ``p_f = 0``.

    With ``s = +1`` for "right", ``-1`` for "left" and ``speed`` the pretraining data's speed in pixels per
    frame, each step between frames earns ``m_f = clamp(s * (c_{f+1} - c_f) / speed, 0, 1)`` (0 when either
    frame is blank), and

    ``score = P * M``,  ``P = mean_f p_f`` (F frames),  ``M = mean_f m_f`` (F - 1 steps).

    A rigid real digit moving at ``speed`` or faster the prompted way has ``M = 1``, so its score is the
    classifier's mean confidence over frames; a static digit or one moving the other way scores 0.

    Components:
        p_digit: ``P``, the frame-wise digit term.
        motion: ``M``, the motion term.
        success: 1.0 when, in every frame, the whole-pixel window nearest ``x_f`` is classified (argmax) as
            the prompted digit and every step moves at least half the speed the prompted way
            (``m_f >= 0.5``), else 0.0.

    The digit comes from metadata ``digit`` or the prompt (as :func:`prompted_digit`), the direction from
    metadata ``direction`` or the prompt's "left"/"right" (:func:`prompted_direction`); prompts without
    either score NaN, as do videos with non-finite pixels (other rows untouched). Each video is read by one
    classifier call of fixed shape (F x (W - 7) windows), so a score does not depend on its batch.
    """

    name: ClassVar[str] = "digit-video"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(self, path: str | Path | None = None, classifier: str = "reward", speed: float = 2.0):
        """Args: path: folder of the digits-v1 classifiers (default: the weights shipped in the package);
        classifier: ``"reward"`` or ``"gold"`` (see :class:`DigitClassifierReward`); speed: pixels per frame
        that earn the full motion term (``digits-video-v1`` moves its digits 2 px per frame)."""
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.classifier = DigitClassifierReward(path, classifier)
        self.model, self.info = self.classifier.model, self.classifier.info
        self.speed = float(speed)

    @torch.no_grad()
    def read(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Videos [B, F, 1, 8, W] in [0, 1] -> (window probabilities [B, F, W - 7, 10], centres of mass
        ``c_f`` [B, F] (NaN for blank frames), interpolation weights of the windows [B, F, W - 7] (rows sum
        to 1; zeros for blank frames))."""
        if videos.dim() != 5 or videos.shape[2] != 1 or videos.shape[3] != 8 or videos.shape[4] < 8:
            raise ValueError(f"digit-video expects [B, F, 1, 8, W >= 8] videos, got {tuple(videos.shape)}")
        if videos.shape[1] < 2:
            raise ValueError(f"digit-video needs at least 2 frames to see motion, got {videos.shape[1]}")
        b, f, _, _, w = videos.shape
        n_win = w - 7
        frames = videos[:, :, 0].float()  # [B, F, 8, W]
        windows = frames.unfold(-1, 8, 1)  # [B, F, 8, n_win, 8]
        windows = windows.permute(0, 1, 3, 2, 4).reshape(b, f * n_win, 64)
        # One call per video, always F * n_win rows: a score does not depend on its batch.
        probs = torch.stack([self.model(windows[i]).softmax(-1) for i in range(b)]).reshape(b, f, n_win, 10)
        colsum = frames.sum(-2)  # [B, F, W]
        mass = colsum.sum(-1)
        cols = torch.arange(w, dtype=torch.float32)
        centre = torch.where(mass > 0, (colsum * cols).sum(-1) / mass.clamp_min(1e-12), float("nan"))
        position = (centre - 3.5).clamp(0, n_win - 1)  # left edge of the digit's window; NaN stays NaN
        left = torch.arange(n_win, dtype=torch.float32)
        weights = (1 - (left - position[..., None]).abs()).clamp_min(0)  # [B, F, n_win]: linear interpolation
        return probs, centre, torch.nan_to_num(weights, nan=0.0)

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> RewardOutput:
        """``videos`` [B, F, 1, 8, W] in [0, 1] -> scores [B] in [0, 1] (NaN: no digit or direction)."""
        n = len(prompts)
        if videos.shape[0] != n:
            raise ValueError(f"digit-video: {videos.shape[0]} videos but {n} prompts")
        finite = torch.isfinite(videos.reshape(n, -1)).all(-1)
        probs, centre, weights = self.read(torch.nan_to_num(videos.float(), nan=0.0).clamp(0, 1))
        metadata = metadata or [{}] * n
        scores, p_digit, motion, success = (torch.full((n,), float("nan")) for _ in range(4))
        why_nan: list[str | None] = [None] * n
        for i, (prompt, meta) in enumerate(zip(prompts, metadata)):
            digit, direction = prompted_digit(prompt, meta), prompted_direction(prompt, meta)
            if digit is None or direction is None:
                why_nan[i] = ("the prompt names no digit (0-9 or zero..nine) or no direction (left/right) and "
                              "metadata has no 'digit'/'direction'")
                continue
            if not finite[i]:
                why_nan[i] = "the video has non-finite pixels"
                continue
            p_frames = (weights[i] * probs[i, :, :, digit]).sum(-1)  # [F]; 0 for blank frames
            blank = torch.isnan(centre[i])
            sign = 1.0 if direction == "right" else -1.0
            steps = torch.nan_to_num(sign * centre[i].diff() / self.speed, nan=0.0).clamp(0, 1)
            nearest = weights[i].argmax(-1)  # [F]: the whole-pixel window nearest the digit's position
            read = probs[i].argmax(-1).gather(1, nearest[:, None])[:, 0]  # [F]: the class read there
            p_digit[i], motion[i] = p_frames.mean(), steps.mean()
            scores[i] = p_digit[i] * motion[i]
            success[i] = float(bool((read == digit).all() and not blank.any() and (steps >= 0.5).all()))
        return RewardOutput(scores=scores, components={"p_digit": p_digit, "motion": motion, "success": success},
                            info={NAN_REASON: why_nan})
