"""The Wan task specs: tiny-wan-video-v1 trained end to end by Flow-GRPO and OP-GRPO, and the Wan2.1-T2V-1.3B
video-OCR tasks' settings and missing-weights errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opgrpo_bench.errors import MissingWeightsError, UserError
from opgrpo_bench.registry import BACKBONES, TASKS
from opgrpo_bench.tasks import sd3_tasks, wan_tasks
from opgrpo_bench.tasks.spec import TaskSpec

WAN21_TASKS = ("video-ocr-wan21-v1", "video-ocr-wan21-smoke-v1")
SMALL = ["eval_every=2", "prompts_per_iter=2", "group_size=4"]


@pytest.fixture()
def no_wan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Neither prompt files nor Wan2.1 weights: an empty HF cache, no environment variables."""
    from huggingface_hub import constants

    monkeypatch.delenv(sd3_tasks.PROMPTS_ENV, raising=False)
    monkeypatch.delenv(wan_tasks.WAN21_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    # the registry keeps a loaded target and the module an lru_cache: put the lazy targets back
    for task_id, attr in zip(WAN21_TASKS, ("VIDEO_OCR_WAN21_V1", "VIDEO_OCR_WAN21_SMOKE_V1")):
        monkeypatch.setattr(TASKS.entry(task_id), "target", f"opgrpo_bench.tasks.wan_tasks:{attr}")
    wan_tasks._spec.cache_clear()
    yield
    wan_tasks._spec.cache_clear()


# -- tiny-wan-video-v1 -------------------------------------------------------------------------------
def test_tiny_wan_task_spec():
    spec = TASKS.get("tiny-wan-video-v1")
    assert isinstance(spec, TaskSpec) and TASKS.get("tiny-wan") is spec and spec.version == "v1"
    assert spec.backbone == "tiny-wan" and spec.reward == "video"
    assert spec.reward_args["reward"] == "jpeg-compressibility"  # frame-wise, mean over frames
    assert spec.train_defaults["guidance"] == 4.5  # Wan2.1 is not guidance-distilled: true CFG
    assert not {p.text for p in spec.train_prompts} & {p.text for p in spec.eval_prompts}


def _lora_b(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors")
    return {k: v for k, v in weights.items() if "lora_B" in k}


@pytest.mark.parametrize("algorithm", ["flow-grpo", "op-grpo"])
def test_tiny_wan_task_trains_two_steps(cache_dir: Path, tiny_wan_folder: Path, tmp_path: Path, algorithm: str):
    """Two optimizer steps through the runner: records complete, two NFEs per sample and step (CFG), and the
    saved adapters moved away from their zero start (lora_B starts at 0)."""
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import run_one

    end = run_one("tiny-wan-video-v1", algorithm, seed=0, out=tmp_path, steps=2, sets=SMALL, resume=False)
    run_dir = tmp_path / f"tiny-wan-video-v1__{algorithm}__seed0"
    records = read_records(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    assert end["type"] == "run_end" and end["steps"] == 2
    assert [r["step"] for r in steps] == [1, 2] and [r["step"] for r in evals] == [0, 2]
    assert records[0]["config"]["train"]["guidance"] == 4.5
    # rollout: 2 groups x 4 videos x 4 steps at 2 NFEs each (CFG), plus the updates
    assert 2 * 4 * 4 * 2 <= steps[-1]["nfe"]
    assert all(-5.0 < e["score"] < 0.0 for e in evals)  # minus the mean JPEG size of 32x32 frames in kB
    lora_b = _lora_b(run_dir)
    assert lora_b and any(v.abs().max() > 0 for v in lora_b.values())
    assert all(k.startswith("transformer.") for k in lora_b)  # diffusers' LoRA format


def test_tiny_wan_adapter_loads_into_the_wan_pipeline(cache_dir: Path, tiny_wan_folder: Path, tmp_path: Path):
    """``WanPipeline.load_lora_weights`` takes the run's EMA adapter; evaluating that pipeline's transformer
    gives the run's last eval score (the adapter format is Wan-loadable, rank and alpha included)."""
    from opgrpo_bench.evaluation import Evaluator
    from opgrpo_bench.registry import REWARDS
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import run_one

    run_one("tiny-wan-video-v1", "flow-grpo", seed=0, out=tmp_path, steps=2, sets=SMALL, resume=False)
    run_dir = tmp_path / "tiny-wan-video-v1__flow-grpo__seed0"
    records = read_records(run_dir / "metrics.jsonl")
    train = records[0]["config"]["train"]
    task = TASKS.get("tiny-wan-video-v1")
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


# -- Wan2.1-T2V-1.3B tasks ---------------------------------------------------------------------------
def test_video_ocr_wan21_without_prompt_files_fails_with_one_line(no_wan, monkeypatch: pytest.MonkeyPatch):
    import diffusers

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("a pipeline was loaded")))
    with pytest.raises(MissingWeightsError) as info:
        TASKS.get("video-ocr-wan21-v1")
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    assert sd3_tasks.PROMPTS_ENV in message and wan_tasks.WAN21_ENV in message
    assert "video-ocr-wan21-v1" in message and "video-ocr-wan21-smoke-v1" in message


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
    assert (wan_tasks.WAN21_HEIGHT, wan_tasks.WAN21_WIDTH, wan_tasks.WAN21_NUM_FRAMES) == (240, 416, 33)
    assert smoke.description.startswith("SMOKE") and smoke.budget_steps <= 10
    assert smoke.train_defaults["num_steps"] == 20 and smoke.train_defaults["group_size"] == 4
    from opgrpo_bench.runner import resolve

    for task_id in WAN21_TASKS:
        config = resolve(task_id, "flow-grpo", seed=0)
        assert config.train_config.guidance == 4.5 and config.train_config.num_steps == 20


@pytest.mark.parametrize("source,expected", [(None, "not in the Hugging Face cache"), ("nope", "does not exist")])
def test_wan21_backbone_without_weights_fails_fast(no_wan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   source: str | None, expected: str):
    if source:
        monkeypatch.setenv(wan_tasks.WAN21_ENV, str(tmp_path / source))
    spec = TASKS.get("video-ocr-wan21-smoke-v1")
    with pytest.raises(MissingWeightsError) as info:
        spec.build_backbone()
    message = str(info.value)
    assert "\n" not in message and expected in message and wan_tasks.WAN21_ENV in message
    assert "Wan2.1-T2V-1.3B weights" in message
    assert wan_tasks.wan21_weights_missing() == message


def test_wan_backbones_are_registered():
    assert {"wan", "wan21-t2v-1.3b", "tiny-wan"} <= set(BACKBONES.names())
    assert BACKBONES.entry("wan21-t2v-1.3b").meta["external_weights"]
    assert not BACKBONES.entry("tiny-wan").meta["external_weights"]


@pytest.mark.parametrize("task_id", WAN21_TASKS)
def test_cli_run_prints_one_line_and_exits_2(no_wan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], task_id: str):
    """`opgrpo-bench run --task <Wan2.1 task>` without weights (and prompt files): one error line, exit code 2
    (in process: the console script's ``main``). The full task fails while its spec is built (prompt files),
    before anything else is printed; the smoke task when its backbone is built, after the CLI's progress line."""
    from opgrpo_bench import cli

    monkeypatch.setattr("sys.argv", ["opgrpo-bench", "run", "--task", task_id, "--out", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and wan_tasks.WAN21_ENV in errors[0] and lines[-1] == errors[0]
    if task_id == "video-ocr-wan21-v1":
        assert lines == errors
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.jsonl"))
