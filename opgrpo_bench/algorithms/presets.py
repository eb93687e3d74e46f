"""Algorithm presets: an algorithm class plus config overrides. Ablations are presets, not copies."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A registered algorithm: ``target`` ("module:Class") built with ``overrides`` on its config."""

    target: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def algorithm_class(self) -> type:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def config_fields(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.algorithm_class().config_cls)}

    def build(self, **changes: Any) -> Any:
        """The algorithm with this preset's overrides, then ``changes`` (e.g. from ``--set``), applied."""
        cls = self.algorithm_class()
        unknown = set(changes) - set(self.config_fields())
        if unknown:
            raise ValueError(f"unknown {cls.name} setting(s): {', '.join(sorted(unknown))}")
        return cls(cls.config_cls(**{**self.overrides, **changes}))
