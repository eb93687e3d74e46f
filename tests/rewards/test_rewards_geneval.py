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
    count_term,
    evaluate,
    filter_detections,
    partial_score,
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
    images = torch.rand(4, 3, 48, 64)
    meta = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}]},
            {"tag": "counting", "include": [{"class": "person", "count": 50}]}, {},
            {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}]
    calls: list[str] = []
    colors = reward.colors

    def counting_colors(image, cls, found):  # type: ignore[no-untyped-def]
        calls.append(cls)
        return colors(image, cls, found)

    reward.colors = counting_colors
    out = reward(images, ["a dog", "fifty people", "no metadata", "a red car"], meta)
    assert set(out.components) == {"correct", "partial", "requirements_met"}
    assert out.components["correct"][1] == 0.0  # 8 queries cannot give 50 people
    dets = filter_detections(reward.detector(images[1]), "counting", 0.0, 0.0)
    people = len(dets.get("person", []))
    assert out.scores[1] == pytest.approx(min(people, 50) / 50)  # "at least 50": partial credit c / n
    assert out.info["partial_terms"][1] == [["count person >=50", pytest.approx(people / 50, abs=1e-6)]]
    assert math.isnan(out.scores[2]) and out.info["reasons"][2] is None
    assert "no GenEval metadata" in out.info["nan_reason"][2] and out.info["nan_reason"][0] is None
    assert calls.count("car") <= 1  # the strict and the partial rule share one colour classification
    for i in (0, 1, 3):  # partial is 1 exactly when correct
        assert (float(out.scores[i]) == 1.0) == (float(out.components["correct"][i]) == 1.0)
    strict = REWARDS.get("geneval")(path=mask2former_dir, clip_path=clip_dir, detector_size=64,
                                    threshold=0.0, counting_threshold=0.0)
    again = strict(images, ["a dog", "fifty people", "no metadata", "a red car"], meta)
    assert torch.allclose(again.scores, again.components["correct"], equal_nan=True)  # default: GenEval's 0/1
    assert torch.allclose(again.components["partial"], out.scores, equal_nan=True)
    det0 = reward.detector(images[0])
    assert all(isinstance(d, Detection) and d.mask.shape == (48, 64) for ds in det0.values() for d in ds)
    with pytest.raises(ValueError, match="mode"):
        REWARDS.get("geneval")(path=mask2former_dir, clip_path=clip_dir, mode="fraction")


# -- partial score (Flow-GRPO-style), hand-computed cases ---------------------------------------------------
def dets_of(**counts: int) -> dict[str, list[Detection]]:
    """``counts`` detections per class, side by side (x = 20 i), all above every threshold."""
    return {cls: [det(20 * i, 0, 20 * i + 10, 10) for i in range(n)] for cls, n in counts.items()}


def test_count_term_values() -> None:
    assert count_term(3, 3, exact=True) == 1.0
    assert count_term(2, 3, exact=True) == pytest.approx(2 / 3)  # 1 - |2 - 3| / 3
    assert count_term(4, 3, exact=True) == pytest.approx(2 / 3)  # too many costs as much as too few
    assert count_term(6, 3, exact=True) == 0.0 and count_term(7, 3, exact=True) == 0.0  # clipped at 0
    assert count_term(0, 3, exact=True) == 0.0
    assert count_term(1, 2, exact=False) == 0.5 and count_term(5, 2, exact=False) == 1.0  # "at least"
    assert count_term(0, 0, exact=True) == 1.0 and count_term(1, 0, exact=True) == 0.0


@pytest.mark.parametrize(("found", "partial"), [(0, 0.0), (1, 1 / 3), (2, 2 / 3), (3, 1.0), (4, 2 / 3), (5, 1 / 3),
                                                (6, 0.0), (9, 0.0)])
def test_partial_counting_prompt(found: int, partial: float) -> None:
    """GenEval's "three apples": include apple x3 and exclude apple x4 -> one term, 1 - |c - 3| / 3."""
    meta = {"tag": "counting", "include": [{"class": "apple", "count": 3}], "exclude": [{"class": "apple", "count": 4}]}
    dets = dets_of(apple=found)
    score, terms = partial_score(dets, meta)
    assert score == pytest.approx(partial)
    assert [name for name, _ in terms] == ["count apple ==3"]  # the exclude is folded into the count term
    assert evaluate(dets, meta)[0] == (found == 3)


def test_partial_two_objects_and_exclude() -> None:
    meta = {"tag": "two_object", "include": [{"class": "cup", "count": 1}, {"class": "laptop", "count": 1}]}
    assert partial_score(dets_of(cup=2), meta)[0] == 0.5  # extra cups cost nothing ("at least"), no laptop
    assert partial_score(dets_of(cup=1, laptop=1), meta)[0] == 1.0
    meta = {"include": [{"class": "dog", "count": 1}], "exclude": [{"class": "cat", "count": 1}]}
    score, terms = partial_score(dets_of(dog=1, cat=1), meta)
    assert score == 0.5 and terms == [("count dog >=1", 1.0), ("exclude cat<1", 0.0)]
    assert partial_score(dets_of(dog=1), meta)[0] == 1.0
    assert math.isnan(partial_score(dets_of(dog=1), {})[0])


def test_partial_colour_fraction() -> None:
    meta = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}]}

    def color_fn(cls, found):  # type: ignore[no-untyped-def]
        return ["red", "blue", "red"][: len(found)]

    score, terms = partial_score(dets_of(car=2), meta, color_fn)
    assert terms == [("count car >=2", 1.0), ("color red car", 0.5)] and score == 0.75
    score, terms = partial_score(dets_of(car=1), meta, color_fn)  # one car, red: count 1/2, colour 1/2
    assert score == 0.5 and terms[1] == ("color red car", 0.5)
    assert partial_score(dets_of(car=3), meta, color_fn)[0] == 0.75  # only the 2 most confident are judged
    assert partial_score({}, meta, color_fn) == (0.0, [("count car >=2", 0.0), ("color red car", 0.0)])
    with pytest.raises(ValueError, match="colour"):
        partial_score(dets_of(car=1), meta)


def test_partial_position_fraction() -> None:
    chair = det(40, 40, 60, 60)
    left_dog, right_dog = det(0, 40, 20, 60), det(80, 40, 100, 60)
    meta = {"tag": "position", "include": [{"class": "chair", "count": 1},
                                           {"class": "dog", "count": 2, "position": ["left of", 0]}]}
    score, terms = partial_score({"chair": [chair], "dog": [left_dog, right_dog]}, meta)
    assert terms == [("count chair >=1", 1.0), ("count dog >=2", 1.0), ("position dog left of 0", 0.5)]
    assert score == pytest.approx(2.5 / 3)
    assert not evaluate({"chair": [chair], "dog": [left_dog, right_dog]}, meta)[0]
    score, terms = partial_score({"chair": [chair], "dog": [left_dog]}, meta)  # 1 of the 2 pairs asked
    assert [v for _, v in terms] == [1.0, 0.5, 0.5] and score == pytest.approx(2 / 3)
    score, terms = partial_score({"dog": [left_dog]}, {"include": [{"class": "chair", "count": 1},
                                                                   {"class": "dog", "count": 1, "position": ["left of", 0]}]})
    assert [v for _, v in terms] == [0.0, 1.0, 0.0] and score == pytest.approx(1 / 3)  # no target: no relation
    bad_target = {"include": [{"class": "dog", "count": 1, "position": ["left of", 0]}]}  # points at itself
    assert partial_score({"dog": [left_dog]}, bad_target)[1][-1] == ("position dog left of 0", 0.0)


def test_partial_is_one_exactly_when_correct() -> None:
    rng = np.random.default_rng(0)
    metas = [
        {"include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}]},
        {"include": [{"class": "cat", "count": 1, "color": "black"}, {"class": "dog", "count": 1}]},
        {"include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}]},
        {"include": [{"class": "dog", "count": 1, "color": "brown"},
                     {"class": "cat", "count": 1, "position": ["above", 0]}], "exclude": [{"class": "car", "count": 1}]},
    ]
    palette = ["black", "brown", "white"]
    agree = 0
    for _ in range(300):
        dets: dict[str, list[Detection]] = {}
        for cls in ("cat", "dog", "car"):
            boxes = []
            for _ in range(int(rng.integers(0, 4))):
                x, y = rng.uniform(0, 80, size=2)
                boxes.append(det(x, y, x + 20, y + 20))
            if boxes:
                dets[cls] = boxes
        colours = {cls: list(rng.choice(palette, size=4)) for cls in ("cat", "dog")}

        def color_fn(cls, found, colours=colours):  # type: ignore[no-untyped-def]
            return colours[cls][: len(found)]

        for meta in metas:
            ok = evaluate(dets, meta, color_fn)[0]
            score, _ = partial_score(dets, meta, color_fn)
            assert 0.0 <= score <= 1.0
            assert (score == 1.0) == ok, (meta, dets, colours)
            agree += ok
    assert agree > 20  # the random cases include correct ones


def test_geneval_tasks_train_on_partial_and_evaluate_correct() -> None:
    from opgrpo_bench.tasks import sd3_tasks

    spec = sd3_tasks.GENEVAL_SD35M_SMOKE_V1
    assert spec.reward == "geneval" and spec.reward_args == {"mode": "partial"} and spec.eval_metric == "correct"
    other = sd3_tasks.OCR_SD35M_SMOKE_V1
    assert other.reward_args == {} and other.eval_metric is None
