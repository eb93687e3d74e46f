"""GenEval's rules on hand-made detections (no model), and the detector/colour path on stand-ins."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from opgrpo_bench.rewards.geneval import (
    ColorClassifier,
    Detection,
    boxes_from_masks,
    canonical_class,
    evaluate,
    filter_detections,
    relative_position,
)


def det(x1: float, y1: float, x2: float, y2: float, score: float = 0.99) -> Detection:
    return Detection((x1, y1, x2, y2), score)


def test_relative_position() -> None:
    left, right = det(0, 40, 20, 60), det(80, 40, 100, 60)
    above, below = det(40, 0, 60, 20), det(40, 80, 60, 100)
    assert relative_position(left, right) == {"left of"}
    assert relative_position(right, left) == {"right of"}
    assert relative_position(above, below) == {"above"}
    assert relative_position(below, above) == {"below"}
    assert relative_position(det(0, 0, 50, 50), det(2, 2, 52, 52)) == set()  # overlapping: no relation
    assert relative_position(det(0, 40, 20, 60), det(3, 40, 23, 60)) == set()  # offset within 0.1 x sizes


def test_diagonal_offsets_give_both_relations() -> None:
    rel = relative_position(det(0, 0, 10, 10), det(90, 90, 100, 100))
    assert rel == {"left of", "above"}  # normalised offsets of about -0.71 on both axes


def test_filter_uses_counting_threshold_and_cap() -> None:
    raw = {"dog": [det(0, 0, 1, 1, s) for s in (0.95, 0.5, 0.35, 0.2)], "mouse": [det(0, 0, 1, 1, 0.8)]}
    assert len(filter_detections(raw, "single_object")["dog"]) == 3
    assert len(filter_detections(raw, "counting")["dog"]) == 1
    assert "computer mouse" in filter_detections(raw, "single_object")
    many = {"cat": [det(0, 0, 1, 1, 0.5 + i / 100) for i in range(30)]}
    kept = filter_detections(many, None)["cat"]
    assert len(kept) == 16 and kept[0].score == max(d.score for d in many["cat"])


def test_canonical_class_names() -> None:
    assert canonical_class("Mouse") == "computer mouse"
    assert canonical_class("dining_table") == "dining table"
    assert canonical_class("tv remote") == "tv remote"


def test_evaluate_objects_counting_exclusion() -> None:
    dets = {"dog": [det(0, 0, 10, 10), det(50, 0, 60, 10)], "cat": [det(0, 50, 10, 60)]}
    ok, frac, _ = evaluate(dets, {"include": [{"class": "dog", "count": 2}]})
    assert ok and frac == 1.0
    ok, frac, why = evaluate(dets, {"include": [{"class": "dog", "count": 3}]})
    assert not ok and frac == 0.0 and "dog>=3" in why[0]
    meta = {"include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}
    assert evaluate(dets, meta)[0]
    meta = {"include": [{"class": "cat", "count": 1}], "exclude": [{"class": "dog", "count": 2}]}
    ok, frac, _ = evaluate(dets, meta)
    assert not ok and frac == 0.5


def test_evaluate_colour_and_position() -> None:
    dets = {"dog": [det(0, 40, 20, 60)], "cat": [det(80, 40, 100, 60)]}
    colours = {"dog": ["brown"], "cat": ["black"]}

    def color_fn(cls, found):  # type: ignore[no-untyped-def]
        return colours[cls][: len(found)]

    meta = {"include": [{"class": "dog", "count": 1, "color": "brown"},
                        {"class": "cat", "count": 1, "position": ["right of", 0]}]}
    assert evaluate(dets, meta, color_fn)[0]
    meta["include"][1]["position"] = ["left of", 0]
    ok, frac, _ = evaluate(dets, meta, color_fn)
    assert not ok and frac == 0.5
    meta = {"include": [{"class": "dog", "count": 1, "color": "white"},
                        {"class": "cat", "count": 1, "position": ["right of", 0]}]}
    ok, frac, _ = evaluate(dets, meta, color_fn)
    assert not ok and frac == 0.0  # the position target failed, so the relation cannot hold
    with pytest.raises(ValueError):
        evaluate(dets, {"include": [{"class": "dog", "count": 1, "color": "red"}]})
    assert math.isnan(evaluate(dets, {})[1])


def test_boxes_from_masks() -> None:
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    assert boxes_from_masks(masks).tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]


def test_colour_crops_use_grey_background(clip_dir: Path) -> None:
    from opgrpo_bench.rewards.clip import ClipBackbone

    classifier = ColorClassifier(ClipBackbone(clip_dir, None, torch.device("cpu"), torch.float32))
    image = torch.zeros(3, 20, 20)
    image[0] = 1.0  # red
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    mask[5, 5] = False
    crop = classifier.crops(image, [Detection((5, 5, 10, 10), 0.9, mask)])[0]
    assert crop.shape == (3, 5, 5)
    assert torch.allclose(crop[:, 0, 0], torch.full((3,), 0x99 / 255))
    assert torch.equal(crop[:, 1, 1], torch.tensor([1.0, 0.0, 0.0]))
    colours = classifier(image, "car", [Detection((5, 5, 10, 10), 0.9, mask)])
    assert len(colours) == 1 and colours[0] in {"red", "orange", "yellow", "green", "blue", "purple", "pink",
                                                "brown", "black", "white"}


def test_geneval_reward_on_standins(mask2former_dir: Path, clip_dir: Path) -> None:
    from opgrpo_bench.registry import REWARDS

    reward = REWARDS.get("geneval")(path=mask2former_dir, clip_path=clip_dir, detector_size=64, mode="partial",
                                    threshold=0.0, counting_threshold=0.0)
    images = torch.rand(3, 3, 48, 64)
    meta = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}]},
            {"tag": "counting", "include": [{"class": "person", "count": 50}]}, {}]
    out = reward(images, ["a dog", "fifty people", "no metadata"], meta)
    assert out.scores[1] == 0.0 and out.components["correct"][1] == 0.0  # 8 queries cannot give 50 people
    assert math.isnan(out.scores[2]) and out.info["reasons"][2] is None
    dets = reward.detector(images[0])
    assert all(isinstance(d, Detection) and d.mask.shape == (48, 64) for ds in dets.values() for d in ds)
