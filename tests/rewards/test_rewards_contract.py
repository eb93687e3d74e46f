"""Contract tests over every registered reward: shape and dtype, batch invariance, NaN safety, determinism.

Rewards that need real weights run here on random-init stand-ins of their architecture (see
``reward_standins.py``) through their real loading code. A reward registered without a case below fails
``test_every_reward_has_a_contract_case``, so new rewards cannot skip these checks.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

import reward_standins as standins
from opgrpo_bench.registry import REWARDS

HAS_OCR = importlib.util.find_spec("rapidocr_onnxruntime") is not None
needs_ocr = pytest.mark.skipif(not HAS_OCR, reason="rapidocr-onnxruntime not installed (extra 'ocr')")


def _images(b: int, c: int = 3, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, c, 1, 1, generator=g)
    return (base + 0.3 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)


PROMPTS = ["a photo of a cat", "a red dog", 'a sign that says "hello"', "a blue object"]


def generic_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    return _images(b), [PROMPTS[i % len(PROMPTS)] for i in range(b)], None


def ocr_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    words = ["HELLO", "WORLD", "OCR", "CAT"]
    imgs = torch.stack([standins.render_text(words[i % 4], size=(192, 64), font_size=32) for i in range(b)])
    prompts = [f'A sign that says "{words[(i + i // 2) % 4]}"' if i % 3 != 2 else "no quoted text" for i in range(b)]
    return imgs, prompts, None


def video_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    imgs, prompts, meta = ocr_inputs(b)
    frames = torch.stack([imgs, imgs.flip(-1), imgs], dim=1)  # [B, 3 frames, C, H, W]
    return frames, prompts, meta


def digit_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    return _images(b, c=1, h=8, w=8), [f"the digit {i % 10}" if i % 3 else "no digit" for i in range(b)], None


def digit_pair_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    return _images(b, c=1, h=8, w=16), [f"a {i % 10} left of a {(i + 3) % 10}" if i % 3 else "no digits"
                                        for i in range(b)], None


def digit_number_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    return _images(b, c=1, h=8, w=24), [f"the number {(37 * i) % 1000:03d}" if i % 3 else "no digits"
                                        for i in range(b)], None


def digit_video_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    frames = torch.stack([_images(b, c=1, h=8, w=14, seed=f) for f in range(4)], dim=1)  # [B, 4, 1, 8, 14]
    return frames, [f"a {i % 10} moving {('left', 'right')[i % 2]}" if i % 3 else "no digit" for i in range(b)], None


def geneval_inputs(b: int) -> tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]:
    metas: list[dict[str, Any]] = [
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}]},
        {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"}]},
        {},
        {"tag": "position", "include": [{"class": "dog", "count": 1},
                                        {"class": "cat", "count": 1, "position": ["left of", 0]}]},
    ]
    return _images(b, h=64, w=64), [PROMPTS[i % 4] for i in range(b)], [metas[i % 4] for i in range(b)]


@dataclass
class Case:
    build: Callable[[pytest.FixtureRequest], Any]
    inputs: Callable[[int], tuple[torch.Tensor, list[str], list[dict[str, Any]] | None]] = generic_inputs
    marks: tuple[Any, ...] = ()


def _fx(request: pytest.FixtureRequest, name: str) -> Any:
    return request.getfixturevalue(name)


def _remote(request: pytest.FixtureRequest) -> Any:
    from opgrpo_bench.rewards.jpeg import JpegIncompressibility
    from opgrpo_bench.rewards.server import serve

    ready = threading.Event()
    threading.Thread(target=serve, args=(JpegIncompressibility(), "127.0.0.1", 0, ready, 1), daemon=True).start()
    assert ready.wait(60)  # returns once listening; the bound is for a server that never starts
    reward = REWARDS.get("remote")(address=f"127.0.0.1:{ready.port}")  # type: ignore[attr-defined]
    request.addfinalizer(reward.close)
    return reward


def _digits(request: pytest.FixtureRequest) -> Any:
    try:
        return REWARDS.get("digit-classifier")()
    except (FileNotFoundError, ImportError, OSError) as exc:
        pytest.skip(f"digit-classifier weights not built yet in this checkout ({type(exc).__name__})")


CASES: dict[str, Case] = {
    "ocr": Case(lambda r: REWARDS.get("ocr")(), ocr_inputs, (needs_ocr,)),
    "video-ocr": Case(lambda r: REWARDS.get("video-ocr")(), video_inputs, (needs_ocr,)),
    "video": Case(lambda r: REWARDS.get("video")(reward="jpeg-incompressibility", aggregate="min"), video_inputs),
    "jpeg-compressibility": Case(lambda r: REWARDS.get("jpeg-compressibility")()),
    "jpeg-incompressibility": Case(lambda r: REWARDS.get("jpeg-incompressibility")()),
    "composite": Case(lambda r: REWARDS.get("composite")(
        weights={"jpeg-compressibility": 1.0, "jpeg-incompressibility": 0.5})),
    "digit-classifier": Case(_digits, digit_inputs),
    "digit-pair": Case(lambda request: REWARDS.get("digit-pair")(), digit_pair_inputs),
    "digit-number": Case(lambda request: REWARDS.get("digit-number")(), digit_number_inputs),
    "digit-video": Case(lambda request: REWARDS.get("digit-video")(), digit_video_inputs),
    "threshold": Case(lambda request: REWARDS.get("threshold")(reward="digit-classifier", threshold=0.1),
                      digit_inputs),
    "remote": Case(_remote),
    "clipscore": Case(lambda r: REWARDS.get("clipscore")(path=_fx(r, "clip_dir"))),
    "pickscore": Case(lambda r: REWARDS.get("pickscore")(
        path=_fx(r, "pickscore_dirs")[0], processor_path=_fx(r, "pickscore_dirs")[1])),
    "aesthetic": Case(lambda r: REWARDS.get("aesthetic")(path=_fx(r, "clip_dir"), mlp_path=_fx(r, "aesthetic_mlp"))),
    "hpsv2": Case(lambda r: REWARDS.get("hpsv2")(
        path=_fx(r, "hpsv2_files")[0], tokenizer_path=_fx(r, "hpsv2_files")[1], vision_heads=2, text_heads=2)),
    "image-reward": Case(lambda r: REWARDS.get("image-reward")(
        path=_fx(r, "image_reward_files")[0], tokenizer_path=_fx(r, "image_reward_files")[1], vision_heads=2,
        text_heads=2)),
    "geneval": Case(lambda r: REWARDS.get("geneval")(
        path=_fx(r, "mask2former_dir"), clip_path=_fx(r, "clip_dir"), detector_size=64, threshold=0.0,
        counting_threshold=0.0), geneval_inputs),
}


def test_every_reward_has_a_contract_case() -> None:
    missing = sorted(set(REWARDS.names()) - set(CASES))
    assert not missing, f"add a contract case for: {missing}"


_built: dict[str, Any] = {}


@pytest.fixture
def case(request: pytest.FixtureRequest) -> tuple[Any, Case]:
    name = request.param
    c = CASES[name]
    if name not in _built or name == "remote":
        _built[name] = c.build(request)
    return _built[name], c


PARAMS = [pytest.param(n, marks=list(c.marks), id=n) for n, c in CASES.items()]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_shape_dtype_and_declarations(case: tuple[Any, Case]) -> None:
    reward, c = case
    images, prompts, meta = c.inputs(4)
    out = reward(images, prompts, meta)
    assert out.scores.dtype == torch.float32 and out.scores.shape == (4,)
    for key, value in out.components.items():
        assert value.dtype == torch.float32 and value.shape == (4,), key
    assert isinstance(reward.higher_is_better, bool)
    low, high = reward.range
    finite = out.scores[~torch.isnan(out.scores)]
    assert low <= high and bool(((finite >= low) & (finite <= high)).all()), (out.scores, reward.range)
    assert not torch.isinf(out.scores).any()


@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_batch_invariance(case: tuple[Any, Case]) -> None:
    """A sample's score does not depend on which other samples share its batch, nor on their order."""
    reward, c = case
    images, prompts, meta = c.inputs(4)
    full = reward(images, prompts, meta).scores
    perm = [2, 0, 3, 1]
    permuted = reward(images[perm], [prompts[i] for i in perm], None if meta is None else [meta[i] for i in perm])
    assert _close(permuted.scores, full[perm])
    for i in (0, 3):
        single = reward(images[i : i + 1], prompts[i : i + 1], None if meta is None else meta[i : i + 1]).scores
        assert _close(single, full[i : i + 1]), (i, single, full)


@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_nan_safety(case: tuple[Any, Case]) -> None:
    """NaN pixels do not crash a reward nor leak into the other samples' scores."""
    reward, c = case
    images, prompts, meta = c.inputs(3)
    clean = reward(images, prompts, meta).scores
    broken = images.clone()
    broken[1] = float("nan")
    out = reward(broken, prompts, meta).scores
    assert not torch.isinf(out).any()
    assert _close(out[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("case", PARAMS, indirect=True)
def test_deterministic(case: tuple[Any, Case]) -> None:
    reward, c = case
    images, prompts, meta = c.inputs(3)
    a = reward(images, prompts, meta)
    b = reward(images, prompts, meta)
    assert torch.equal(torch.nan_to_num(a.scores, nan=-123.0), torch.nan_to_num(b.scores, nan=-123.0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_registry_entry_declares_needs(name: str) -> None:
    entry = REWARDS.entry(name)
    assert entry.description and entry.meta.get("needs")

