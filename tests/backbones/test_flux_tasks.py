"""The FLUX task specs' own settings: tiny-flux-jpeg-v1 and the FLUX.1-dev PickScore tasks (what every family's
tasks must do, FLUX's included, is in ``test_family_tasks.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opgrpo_bench.backbones import models
from opgrpo_bench.registry import TASKS
from opgrpo_bench.tasks import flux_tasks, sd3_tasks

FLUX_DEV_TASKS = ("pickscore-flux-v1", "pickscore-flux-smoke-v1")


@pytest.fixture()
def no_flux(no_weights):
    """Neither prompt files nor the weights: an empty HF cache, no environment variables."""
    no_weights("flux_tasks", flux_tasks.FLUX_DEV.env,
               dict(zip(FLUX_DEV_TASKS, ("PICKSCORE_FLUX_V1", "PICKSCORE_FLUX_SMOKE_V1"))))


# -- tiny-flux-jpeg-v1 -------------------------------------------------------------------------------
def test_tiny_flux_task_reward_and_guidance():
    """The family's own settings (the spec contract is test_family_tasks.py's)."""
    spec = TASKS.get("tiny-flux-jpeg-v1")
    assert spec.reward == "jpeg-compressibility"
    # FLUX: distilled guidance inside the backbone, no CFG in the trainer
    assert spec.train_defaults["guidance"] == 1.0 and spec.train_defaults["eval_guidance"] == 1.0


# -- FLUX.1-dev tasks --------------------------------------------------------------------------------
def test_pickscore_flux_settings_are_flow_grpos(no_flux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "dataset"
    (root / "pickscore").mkdir(parents=True)
    (root / "pickscore" / "train.txt").write_text("a red fox in snow\na lighthouse at night\n")
    (root / "pickscore" / "test.txt").write_text("a bowl of ramen\n")
    monkeypatch.setenv(sd3_tasks.PROMPTS_ENV, str(root))
    spec, smoke = TASKS.get("pickscore-flux-v1"), TASKS.get("pickscore-flux-smoke-v1")
    assert [p.text for p in spec.train_prompts] == ["a red fox in snow", "a lighthouse at night"]
    assert spec.backbone == smoke.backbone == "flux1-dev" and spec.reward == smoke.reward == "pickscore"
    d = spec.train_defaults
    assert (d["num_steps"], d["eval_num_steps"], d["noise_level"], d["beta"]) == (6, 28, 0.9, 0.0)
    assert (d["guidance"], d["eval_guidance"]) == (1.0, 1.0)  # no true CFG
    assert (d["prompts_per_iter"], d["group_size"], d["lora_rank"], d["lora_alpha"]) == (48, 24, 64, 128)
    assert models.FLUX_DEV_GUIDANCE == 3.5 and models.FLUX_DEV_RESOLUTION == 512
    assert smoke.description.startswith("SMOKE") and smoke.budget_steps <= 10
    assert smoke.train_defaults["num_steps"] == 6 and smoke.train_defaults["group_size"] <= 8
    for task_id in FLUX_DEV_TASKS:
        from opgrpo_bench.runner import resolve

        assert resolve(task_id, "op-grpo", seed=0).train_config.guidance == 1.0

