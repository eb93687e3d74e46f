"""The Wan task specs' own settings: tiny-wan-video-v1 and the Wan2.1-T2V-1.3B video-OCR tasks (what every
family's tasks must do, Wan's included, is in ``test_family_tasks.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opgrpo_bench.backbones import models
from opgrpo_bench.registry import TASKS
from opgrpo_bench.tasks import sd3_tasks, wan_tasks

WAN21_TASKS = ("video-ocr-wan21-v1", "video-ocr-wan21-smoke-v1")


@pytest.fixture()
def no_wan(no_weights):
    """Neither prompt files nor the weights: an empty HF cache, no environment variables."""
    no_weights("wan_tasks", wan_tasks.WAN21.env,
               dict(zip(WAN21_TASKS, ("VIDEO_OCR_WAN21_V1", "VIDEO_OCR_WAN21_SMOKE_V1"))))


# -- tiny-wan-video-v1 -------------------------------------------------------------------------------
def test_tiny_wan_task_reward_and_guidance():
    """The family's own settings (the spec contract is test_family_tasks.py's)."""
    spec = TASKS.get("tiny-wan-video-v1")
    assert spec.reward == "video"
    assert spec.reward_args["reward"] == "jpeg-compressibility"  # frame-wise, mean over frames
    assert spec.train_defaults["guidance"] == 4.5  # Wan2.1 is not guidance-distilled: true CFG


# -- Wan2.1-T2V-1.3B tasks ---------------------------------------------------------------------------
def test_video_ocr_wan21_settings_are_flow_grpos(no_wan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "dataset"
    (root / "ocr").mkdir(parents=True)
    (root / "ocr" / "train.txt").write_text('A sign that says "HELLO"\nA mug printed with "COFFEE"\n')
    (root / "ocr" / "test.txt").write_text('A poster reading "OPEN"\n')
    monkeypatch.setenv(sd3_tasks.PROMPTS_ENV, str(root))
    spec, smoke = TASKS.get("video-ocr-wan21-v1"), TASKS.get("video-ocr-wan21-smoke-v1")
    assert [p.text for p in spec.train_prompts] == ['A sign that says "HELLO"', 'A mug printed with "COFFEE"']
    assert spec.backbone == smoke.backbone == "wan21-t2v-1.3b" and spec.reward == smoke.reward == "video-ocr"
    d = spec.train_defaults
    assert (d["num_steps"], d["eval_num_steps"], d["guidance"], d["eval_guidance"]) == (20, 50, 4.5, 4.5)
    assert (d["group_size"], d["lr"], d["clip_range"], d["beta"], d["global_std"]) == (4, 1e-4, 1e-3, 0.004, False)
    assert (models.WAN21_HEIGHT, models.WAN21_WIDTH, models.WAN21_NUM_FRAMES) == (240, 416, 33)
    assert smoke.description.startswith("SMOKE") and smoke.budget_steps <= 10
    assert smoke.train_defaults["num_steps"] == 20 and smoke.train_defaults["group_size"] == 4
    from opgrpo_bench.runner import resolve

    for task_id in WAN21_TASKS:
        config = resolve(task_id, "flow-grpo", seed=0)
        assert config.train_config.guidance == 4.5 and config.train_config.num_steps == 20

