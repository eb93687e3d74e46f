"""The generic registry: aliases, lazy targets, entry-point plugins, helpful errors."""

from importlib import metadata

import pytest

from opgrpo_bench.registry import ALGORITHMS, BACKBONES, REWARDS, TASKS, Registry, UnknownNameError


def test_register_lookup_alias_and_normalisation():
    reg = Registry("thing")
    reg.register("my-thing", 42, aliases=("mt",), description="answer")
    assert reg.get("my-thing") == 42 and reg.get("MT") == 42 and reg.get("my_thing") == 42
    assert "mt" in reg and "other" not in reg
    with pytest.raises(ValueError):
        reg.register("my-thing", 1)


def test_lazy_target_is_imported_on_first_use():
    reg = Registry("thing")
    reg.register("dumps", "json:dumps")
    entry = reg.entry("dumps")
    assert isinstance(entry.target, str)
    import json

    assert reg.get("dumps") is json.dumps and entry.target is json.dumps


def test_decorator_registration_takes_docstring_as_description():
    reg = Registry("thing")

    @reg.register("fn")
    def fn():
        """Does a thing.

        More text."""

    assert reg.entry("fn").description == "Does a thing."


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError) as err:
        ALGORITHMS.get("op-grpo-rho-5")
    msg = str(err.value)
    assert msg.startswith("unknown algorithm 'op-grpo-rho-5'. Did you mean: op-grpo-rho5")
    assert "\n" not in msg
    with pytest.raises(UnknownNameError, match="Did you mean: digits-v1"):
        TASKS.get("digit-v1")


def test_entry_point_plugins_are_registered(monkeypatch):
    ep = metadata.EntryPoint(name="my-plugin", value="json:loads", group="opgrpo_bench.test_plugins")
    real = metadata.entry_points

    def fake(**kw):
        return [ep] if kw.get("group") == "opgrpo_bench.test_plugins" else real(**kw)

    monkeypatch.setattr(metadata, "entry_points", fake)
    reg = Registry("plugin", "opgrpo_bench.test_plugins")
    import json

    assert reg.get("my-plugin") is json.loads


def test_built_in_entries():
    assert {"flow-grpo", "op-grpo", "op-grpo-no-replay", "op-grpo-no-correction", "op-grpo-naive-is",
            "op-grpo-no-truncation", "op-grpo-rho5", "op-grpo-rho25"} <= set(ALGORITHMS.names())
    assert "digits-v1" in TASKS.names() and "digit-classifier" in REWARDS.names()
    assert {"sd3", "sd35m", "tiny-sd3", "flux", "flux1-dev", "tiny-flux", "digits-v1-base", "digits-pair-v1-base",
            "digits-number-v1-base", "stub-video"} <= set(BACKBONES.names())


def test_every_task_names_a_registered_backbone():
    from opgrpo_bench.errors import MissingWeightsError

    checked = 0
    for name in TASKS.names():
        try:
            spec = TASKS.get(name)
        except MissingWeightsError:  # an SD3.5-M / FLUX.1-dev task whose prompt files are not here
            continue
        assert spec.backbone in BACKBONES, (name, spec.backbone)
        assert isinstance(spec.backbone_args, dict)
        checked += 1
    assert checked >= 8


def test_ablation_presets_differ_from_op_grpo_in_exactly_one_field():
    import dataclasses

    base = dataclasses.asdict(ALGORITHMS.get("op-grpo").build().config)
    for name in ALGORITHMS.names():
        if name.startswith("op-grpo-"):
            cfg = dataclasses.asdict(ALGORITHMS.get(name).build().config)
            assert sum(cfg[k] != base[k] for k in base) == 1, name


def test_every_reference_recipe_sits_beside_its_common_footing_preset_and_is_documented():
    """A ``*-ref`` preset (ALGORITHMS.md 4.1) is the algorithm of the preset without the suffix, or a
    subclass of it, and the docs name it."""
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "ALGORITHMS.md").read_text()
    recipes = [name for name in ALGORITHMS.names() if name.endswith("-ref")]
    assert {"flow-grpo-ref", "flow-grpo-fast-ref", "flow-grpo-cps-ref", "mixgrpo-ref", "grpo-guard-ref",
            "dance-grpo-ref", "diffusion-nft-ref"} <= set(recipes)
    for name in recipes:
        base = name[: -len("-ref")]
        assert base in ALGORITHMS.names(), name
        assert issubclass(type(ALGORITHMS.get(name).build()), type(ALGORITHMS.get(base).build())), name
        assert f"`{name}`" in docs, name
