"""Rules declared on config fields (``validation.setting``): every one builds, and subclasses keep them."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from opgrpo_bench.config import TrainConfig
from opgrpo_bench.registry import ALGORITHMS
from opgrpo_bench.validation import field_rule


def _config_classes() -> list[type]:
    return [TrainConfig] + sorted({e.load().algorithm_class().config_cls for e in ALGORITHMS.entries()},
                                  key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_rule_accepts_the_default(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        rule = field_rule(cls, f.name, hints[f.name])
        if rule is not None:
            assert rule(f.default, hints[f.name]) is None, (cls.__name__, f.name)


def test_rules_sit_on_the_fields() -> None:
    hints = typing.get_type_hints(TrainConfig)
    assert field_rule(TrainConfig, "group_size", hints["group_size"])(1, int) == "must be in [2, 1024]"
    assert field_rule(TrainConfig, "compile", hints["compile"]) is None  # declared without a rule
    cps = ALGORITHMS.get("flow-grpo-cps").algorithm_class().config_cls
    # a subclass that only changes the default keeps its base class's rule
    assert field_rule(cps, "clip_range", float)(0.0, float) == "must be > 0"
