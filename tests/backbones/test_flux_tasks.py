"""The FLUX task specs: tiny-flux-jpeg-v1 trained end to end by Flow-GRPO and OP-GRPO, and the FLUX.1-dev
PickScore tasks' settings and missing-weights errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opgrpo_bench.errors import MissingWeightsError, UserError
from opgrpo_bench.registry import BACKBONES, TASKS
from opgrpo_bench.tasks import flux_tasks, sd3_tasks
from opgrpo_bench.tasks.spec import TaskSpec

FLUX_DEV_TASKS = ("pickscore-flux-v1", "pickscore-flux-smoke-v1")
SMALL = ["eval_every=2", "prompts_per_iter=2", "group_size=4"]


@pytest.fixture()
def no_flux(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Neither prompt files nor FLUX.1-dev weights: an empty HF cache, no environment variables."""
    from huggingface_hub import constants

    monkeypatch.delenv(sd3_tasks.PROMPTS_ENV, raising=False)
    monkeypatch.delenv(flux_tasks.FLUX_DEV_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    # the registry keeps a loaded target and the module an lru_cache: put the lazy targets back
    for task_id, attr in zip(FLUX_DEV_TASKS, ("PICKSCORE_FLUX_V1", "PICKSCORE_FLUX_SMOKE_V1")):
        monkeypatch.setattr(TASKS.entry(task_id), "target", f"opgrpo_bench.tasks.flux_tasks:{attr}")
    flux_tasks._spec.cache_clear()
    yield
    flux_tasks._spec.cache_clear()


# -- tiny-flux-jpeg-v1 -------------------------------------------------------------------------------
def test_tiny_flux_task_spec():
    spec = TASKS.get("tiny-flux-jpeg-v1")
    assert isinstance(spec, TaskSpec) and TASKS.get("tiny-flux") is spec and spec.version == "v1"
    assert spec.backbone == "tiny-flux" and spec.reward == "jpeg-compressibility"
    # FLUX: distilled guidance inside the backbone, no CFG in the trainer
    assert spec.train_defaults["guidance"] == 1.0 and spec.train_defaults["eval_guidance"] == 1.0
    assert not {p.text for p in spec.train_prompts} & {p.text for p in spec.eval_prompts}


def _lora_b(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors")
    return {k: v for k, v in weights.items() if "lora_B" in k}


@pytest.mark.parametrize("algorithm", ["flow-grpo", "op-grpo"])
def test_tiny_flux_task_trains_two_steps(cache_dir: Path, tiny_flux_folder: Path, tmp_path: Path, algorithm: str):
    """Two optimizer steps through the runner: records complete, one NFE per sample and step (no CFG),
    and the saved adapters moved away from their zero start (lora_B starts at 0)."""
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import run_one

    end = run_one("tiny-flux-jpeg-v1", algorithm, seed=0, out=tmp_path, steps=2, sets=SMALL, resume=False)
    run_dir = tmp_path / f"tiny-flux-jpeg-v1__{algorithm}__seed0"
    records = read_records(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    assert end["type"] == "run_end" and end["steps"] == 2
    assert [r["step"] for r in steps] == [1, 2] and [r["step"] for r in evals] == [0, 2]
    assert records[0]["config"]["train"]["guidance"] == 1.0
    # rollout: 2 groups x 4 samples x 4 steps at 1 NFE each (CFG would double it), plus the updates
    assert 2 * 4 * 4 < steps[-1]["nfe"] < 2 * 2 * 4 * 4 * 2
    assert all(-5.0 < e["score"] < 0.0 for e in evals)  # minus a 32x32 JPEG's size in kB
    lora_b = _lora_b(run_dir)
    assert lora_b and any(v.abs().max() > 0 for v in lora_b.values())
    assert all(k.startswith("transformer.") for k in lora_b)  # diffusers' LoRA format


def test_tiny_flux_adapter_loads_into_the_flux_pipeline(cache_dir: Path, tiny_flux_folder: Path, tmp_path: Path):
    """``FluxPipeline.load_lora_weights`` takes the run's EMA adapter; evaluating that pipeline's transformer
    gives the run's last eval score (the adapter format is FLUX-loadable, rank and alpha included)."""
    from opgrpo_bench.evaluation import Evaluator
    from opgrpo_bench.registry import REWARDS
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import run_one

    run_one("tiny-flux-jpeg-v1", "flow-grpo", seed=0, out=tmp_path, steps=2, sets=SMALL, resume=False)
    run_dir = tmp_path / "tiny-flux-jpeg-v1__flow-grpo__seed0"
    records = read_records(run_dir / "metrics.jsonl")
    train = records[0]["config"]["train"]
    task = TASKS.get("tiny-flux-jpeg-v1")
    threads = torch.get_num_threads()
    torch.set_num_threads(train["num_threads"])
    try:
        backbone = task.build_backbone()
        backbone.pipeline.load_lora_weights(str(run_dir / "lora_ema"))
        assert any("lora_" in n for n, _ in backbone.transformer.named_parameters())
        with torch.no_grad():
            got = Evaluator(task, backbone, REWARDS.get(task.reward)(**task.reward_args), None,
                            train["eval_num_steps"], train["eval_guidance"])()
    finally:
        torch.set_num_threads(threads)
    assert got["score"] == [r for r in records if r["type"] == "eval"][-1]["score"]


# -- FLUX.1-dev tasks --------------------------------------------------------------------------------
def test_pickscore_flux_without_prompt_files_fails_with_one_line(no_flux, monkeypatch: pytest.MonkeyPatch):
    import diffusers

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("a pipeline was loaded")))
    with pytest.raises(MissingWeightsError) as info:
        TASKS.get("pickscore-flux-v1")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    assert sd3_tasks.PROMPTS_ENV in message and flux_tasks.FLUX_DEV_ENV in message
    assert "pickscore-flux-v1" in message and "pickscore-flux-smoke-v1" in message


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
    assert flux_tasks.FLUX_DEV_GUIDANCE == 3.5 and flux_tasks.FLUX_DEV_RESOLUTION == 512
    assert smoke.description.startswith("SMOKE") and smoke.budget_steps <= 10
    assert smoke.train_defaults["num_steps"] == 6 and smoke.train_defaults["group_size"] <= 8
    for task_id in FLUX_DEV_TASKS:
        from opgrpo_bench.runner import resolve

        assert resolve(task_id, "op-grpo", seed=0).train_config.guidance == 1.0


@pytest.mark.parametrize("source,expected", [(None, "not in the Hugging Face cache"), ("nope", "does not exist")])
def test_flux_dev_backbone_without_weights_fails_fast(no_flux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      source: str | None, expected: str):
    if source:
        monkeypatch.setenv(flux_tasks.FLUX_DEV_ENV, str(tmp_path / source))
    spec = TASKS.get("pickscore-flux-smoke-v1")
    with pytest.raises(MissingWeightsError) as info:
        spec.build_backbone()
    message = str(info.value)
    assert "\n" not in message and expected in message and flux_tasks.FLUX_DEV_ENV in message
    assert "FLUX.1-dev weights" in message
    assert flux_tasks.flux_dev_weights_missing() == message


def test_flux_backbones_are_registered():
    assert {"flux", "flux1-dev", "tiny-flux"} <= set(BACKBONES.names())
    assert BACKBONES.entry("flux1-dev").meta["external_weights"]
    assert not BACKBONES.entry("tiny-flux").meta["external_weights"]


def test_cli_run_prints_one_line_and_exits_2(no_flux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]):
    """`opgrpo-bench run --task pickscore-flux-v1` without prompt files or weights: one line, exit code 2
    (in process: the console script's ``main``)."""
    from opgrpo_bench import cli

    monkeypatch.setattr("sys.argv", ["opgrpo-bench", "run", "--task", "pickscore-flux-v1", "--out",
                                     str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and flux_tasks.FLUX_DEV_ENV in lines[0] and sd3_tasks.PROMPTS_ENV in lines[0]
    assert not (tmp_path / "runs").exists()
