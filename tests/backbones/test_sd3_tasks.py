"""The SD3 task specs' own settings: tiny-sd3-jpeg-v1 with its KL term, and the SD3.5-M tasks' prompt files,
settings and smoke variants (what every family's tasks must do, SD3's included, is in
``test_family_tasks.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from opgrpo_bench import devices
from opgrpo_bench.backbones import models
from opgrpo_bench.errors import MissingWeightsError, UserError
from opgrpo_bench.registry import BACKBONES, TASKS
from opgrpo_bench.tasks import external, sd3_tasks

SD35M_TASKS = ("ocr-sd35m-v1", "pickscore-sd35m-v1", "geneval-sd35m-v1")
SMOKE_TASKS = ("ocr-sd35m-smoke-v1", "pickscore-sd35m-smoke-v1", "geneval-sd35m-smoke-v1")


@pytest.fixture()
def no_sd35m(no_weights):
    """Neither prompt files nor SD3.5-M weights: an empty HF cache, no environment variables."""
    no_weights("sd3_tasks", sd3_tasks.SD35M.env,
               {t: t.replace("-v1", "").replace("-", "_").upper() + "_V1" for t in SD35M_TASKS + SMOKE_TASKS})


def _write_prompt_dir(root: Path) -> Path:
    for family, (train, test) in sd3_tasks.PROMPT_FILES.items():
        (root / family).mkdir(parents=True)
        if family == "geneval":
            records = [
                {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "a photo of two cats"},
                {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
            ]
            (root / train).write_text("".join(json.dumps(r) + "\n" for r in records))
            (root / test).write_text(json.dumps(records[0]) + "\n\n")
        else:
            (root / train).write_text('A sign that says "HELLO"\n\nA mug printed with "TEA"\n')
            (root / test).write_text('A poster that says "OPEN"\n')
    return root


# -- tiny-sd3-jpeg-v1 --------------------------------------------------------------------------------
def test_tiny_task_reward_and_guidance():
    """The family's own settings (the spec contract is test_family_tasks.py's)."""
    spec = TASKS.get("tiny-sd3-jpeg-v1")
    assert spec.reward == "jpeg-compressibility"
    assert spec.train_defaults["guidance"] > 1 and spec.train_defaults["eval_guidance"] > 1  # CFG exercised


def test_tiny_backbone_is_registered(cache_dir: Path, tiny_folder: Path):
    backbone = BACKBONES.get("tiny-sd3")()
    assert backbone.latent_shape == (16, 8, 8)
    assert backbone.pipeline.text_encoder_3 is not None and backbone.vae is not None


@pytest.mark.train
def test_tiny_task_trains_two_iterations(cache_dir: Path, tiny_folder: Path, tmp_path: Path):
    """2 iterations x 2 optimizer steps through the runner, with the KL term on (reference forward passes)."""
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import find_run_dir, run_one

    end = run_one("tiny-sd3-jpeg-v1", "flow-grpo", seed=0, out=tmp_path, steps=4,
                  sets=["eval_every=2", "beta=0.04", "prompts_per_iter=2", "group_size=4"], resume=False)
    records = read_records(find_run_dir(tmp_path, "tiny-sd3-jpeg-v1", "flow-grpo", 0) / "metrics.jsonl")
    types = [r["type"] for r in records]
    assert types[0] == "run_start" and types[-1] == "run_end" and end["type"] == "run_end"
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert records[0]["task"] == "tiny-sd3-jpeg-v1" and records[0]["config"]["train"]["guidance"] == 4.5
    assert steps[-1]["samples"] == 2 * 2 * 4
    assert steps[-1]["nfe"] > 2 * 2 * 4 * 4 * 2  # CFG rollouts (2 NFE per step) plus the updates
    assert all(r["loss/kl"] >= 0 for r in steps) and any(r["loss/kl"] > 0 for r in steps[1:])
    assert all(-5.0 < e["score"] < 0.0 for e in evals)  # minus a 32x32 JPEG's size in kB
    assert end["steps"] == 4


# -- SD3.5-Medium tasks ------------------------------------------------------------------------------
@pytest.mark.parametrize("task_id", SD35M_TASKS[1:])  # ocr-sd35m-v1: test_family_tasks.py
def test_sd35m_task_without_prompt_files_fails_with_one_line(no_sd35m, task_id: str, monkeypatch):
    import diffusers

    # nothing is loaded on the way to the message (a structural check, not a timing one)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("a pipeline was loaded")))
    with pytest.raises(MissingWeightsError) as info:
        TASKS.get(task_id)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    assert sd3_tasks.PROMPTS_ENV in message and sd3_tasks.SD35M.env in message and task_id in message


def test_sd35m_tasks_read_flow_grpo_prompt_files(no_sd35m, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(sd3_tasks.PROMPTS_ENV, str(_write_prompt_dir(tmp_path / "dataset")))
    ocr, pick, gen = (TASKS.get(t) for t in SD35M_TASKS)
    assert [p.text for p in ocr.train_prompts] == ['A sign that says "HELLO"', 'A mug printed with "TEA"']
    assert len(pick.eval_prompts) == 1
    assert gen.train_prompts[0].text == "a photo of two cats"
    assert gen.train_prompts[0].meta == {"tag": "counting", "include": [{"class": "cat", "count": 2}]}
    assert len(gen.eval_prompts) == 1
    # the papers' settings (ALGORITHMS.md sections 2 and 4; Flow-GRPO's SD3.5-M configs)
    for spec, beta, target in ((ocr, 0.04, 0.92), (pick, 0.01, 23.32), (gen, 0.04, 0.95)):
        d = spec.train_defaults
        assert (d["num_steps"], d["guidance"], d["eval_num_steps"], d["group_size"], d["prompts_per_iter"]) == \
            (10, 4.5, 40, 24, 48)
        assert (d["lora_rank"], d["lora_alpha"], d["lr"], d["beta"]) == (32, 64, 3e-4, beta)
        assert spec.target == target and spec.higher_is_better
    assert (ocr.reward, pick.reward, gen.reward) == ("ocr", "pickscore", "geneval")


def test_sd35m_resolved_run_carries_the_task_settings(no_sd35m, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from opgrpo_bench.runner import resolve

    monkeypatch.setenv(sd3_tasks.PROMPTS_ENV, str(_write_prompt_dir(tmp_path / "dataset")))
    resolved = resolve("pickscore-sd35m-v1", "flow-grpo", seed=0)
    assert resolved.algorithm.config.beta == 0.01
    assert resolved.train_config.guidance == 4.5 and resolved.train_config.group_size == 24


def test_bad_prompt_file_is_a_user_error(no_sd35m, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = _write_prompt_dir(tmp_path / "dataset")
    (root / "geneval" / "train_metadata.jsonl").write_text('{"tag": "counting"}\n')
    (root / "ocr" / "test.txt").unlink()
    monkeypatch.setenv(sd3_tasks.PROMPTS_ENV, str(root))
    with pytest.raises(MissingWeightsError, match="line 1"):
        TASKS.get("geneval-sd35m-v1")
    with pytest.raises(MissingWeightsError, match="ocr/test.txt not found"):
        TASKS.get("ocr-sd35m-v1")


def test_sd35m_run_fails_before_loading_anything(no_sd35m, tmp_path: Path):
    from opgrpo_bench.runner import run_one

    with pytest.raises(UserError, match=sd3_tasks.PROMPTS_ENV):
        run_one("geneval-sd35m-v1", "flow-grpo", seed=0, out=tmp_path)
    assert not list(tmp_path.glob("geneval-sd35m-v1__flow-grpo*"))


# -- smoke variants ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task_id", SMOKE_TASKS)
def test_smoke_tasks_load_without_prompt_files(no_sd35m, task_id: str):
    spec = TASKS.get(task_id)
    assert spec.description.startswith("SMOKE")
    assert spec.budget_steps <= 10 and spec.train_defaults["group_size"] <= 8
    assert spec.train_defaults["num_steps"] == 10 and spec.train_defaults["guidance"] == 4.5
    assert spec.train_prompts and spec.eval_prompts


def test_sample_prompts_suit_their_rewards():
    from opgrpo_bench.rewards.ocr import quoted_text

    ocr = TASKS.get("ocr-sd35m-smoke-v1")
    assert all(quoted_text(p.text) for p in ocr.train_prompts + ocr.eval_prompts)
    gen = TASKS.get("geneval-sd35m-smoke-v1")
    for p in gen.train_prompts + gen.eval_prompts:
        assert p.meta["include"] and p.meta["tag"]
        for req in p.meta["include"]:
            if "position" in req:
                relation, index = req["position"]
                assert relation in ("left of", "right of", "above", "below") and index < len(p.meta["include"])


def test_sd35m_backbone_defaults():
    assert models.SD35M_RESOLUTION == 512 and models.SD35M_MAX_SEQUENCE_LENGTH == 128
    device = devices.default_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
