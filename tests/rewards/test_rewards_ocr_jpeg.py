"""OCR and JPEG rewards on real inputs: rendered text read by the real PP-OCRv4 models, real JPEG encoding."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import reward_standins as standins
from opgrpo_bench.rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb
from opgrpo_bench.rewards.ocr import edit_distance, normalize_text, quoted_text, text_match_score

needs_ocr = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                               reason="rapidocr-onnxruntime not installed (extra 'ocr')")


@pytest.mark.parametrize(("a", "b", "d"), [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                           ("flaw", "lawn", 2), ("hello", "hello", 0), ("ab", "ba", 2)])
def test_edit_distance(a: str, b: str, d: int) -> None:
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_quoted_text_and_normalisation() -> None:
    assert quoted_text('A sign that says "HELLO World" and "x"') == "HELLO World"
    assert quoted_text("no quotes") is None and quoted_text('one " only') is None
    assert normalize_text(" Hello\tWorld ") == "helloworld"


def test_text_match_score_follows_flow_grpo() -> None:
    assert text_match_score("HELLO", "hello") == 1.0
    assert text_match_score("HELLO", "big HELLO sign") == 1.0  # contained
    assert text_match_score("HELLO", "HELP") == pytest.approx(1 - 2 / 5)
    assert text_match_score("HI", "a very long unrelated text") == 0.0  # distance capped at the length
    assert math.isnan(text_match_score("  ", "x"))


@needs_ocr
def test_ocr_reads_rendered_text() -> None:
    """The acceptance check: near 1 for a legible HELLO, clearly less for other text, NaN without a target."""
    from opgrpo_bench.rewards.ocr import OcrReward

    reward = OcrReward()
    images = torch.stack([standins.render_text(t) for t in ("HELLO", "WORLD", "HELL", "HELLO")])
    prompts = ['A sign that says "HELLO"'] * 3 + ["a sign without a quoted target"]
    out = reward(images, prompts)
    assert out.scores[0] > 0.95
    assert out.scores[1] < 0.5
    assert 0.6 < out.scores[2] < 0.95  # one letter missing: 1 - 1/5
    assert math.isnan(out.scores[3])
    assert out.info["ocr_text"][0].replace(" ", "").upper() == "HELLO"


@needs_ocr
def test_ocr_metadata_target_overrides_prompt() -> None:
    from opgrpo_bench.rewards.ocr import OcrReward

    out = OcrReward()(standins.render_text("WORLD")[None], ['says "HELLO"'], [{"text": "WORLD"}])
    assert out.scores[0] > 0.95


def test_jpeg_definitions() -> None:
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images = torch.cat([flat, noisy])
    size = jpeg_size_kb(images)
    assert size[0] < size[1]
    inc = JpegIncompressibility()(images, ["", ""])
    comp = JpegCompressibility()(images, ["", ""])
    assert torch.equal(inc.scores, size) and torch.equal(comp.scores, -size)
    assert comp.scores[0] > comp.scores[1]  # the flat image is the more compressible
    assert torch.allclose(JpegCompressibility(scale=1 / 500)(images, ["", ""]).scores, -size / 500)


def test_grey_and_uint8_inputs() -> None:
    u8 = (torch.rand(2, 1, 32, 32) * 255).round().to(torch.uint8)
    reward = JpegIncompressibility()
    assert torch.equal(reward(u8, ["", ""]).scores, reward(u8.float() / 255, ["", ""]).scores)


def test_input_validation_messages() -> None:
    reward = JpegIncompressibility()
    with pytest.raises(ValueError, match="video"):
        reward(torch.rand(1, 2, 3, 8, 8), ["x"])
    with pytest.raises(ValueError, match="prompts"):
        reward(torch.rand(2, 3, 8, 8), ["x"])
    with pytest.raises(TypeError, match="list of str"):
        reward(torch.rand(1, 3, 8, 8), "x")  # type: ignore[arg-type]
