"""What every model family's tasks must do, checked for SD3, FLUX and Wan with one set of tests: the tiny
task's spec; the tiny task trains two steps with Flow-GRPO and OP-GRPO and saves an adapter its diffusers
pipeline loads (reproducing the run's last eval); the paper tasks, without prompt files or weights, fail
with one line before anything loads. The family-specific settings are in ``test_sd3_tasks.py``,
``test_flux_tasks.py`` and ``test_wan_tasks.py``."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opgrpo_bench.errors import MissingWeightsError, UserError
from opgrpo_bench.registry import BACKBONES, TASKS
from opgrpo_bench.tasks.external import PROMPTS_ENV

SMALL = ["eval_every=2", "prompts_per_iter=2", "group_size=4"]


@dataclass(frozen=True)
class Family:
    module: str
    """``opgrpo_bench.tasks.<module>``."""
    weights: str
    """The module's :class:`~opgrpo_bench.backbones.folders.WeightsSource` attribute."""
    tiny_task: str
    tiny_folder: str
    """The session fixture building the tiny pipeline folder."""
    tasks: dict[str, str]
    """The paper task and its smoke variant -> module attributes."""
    backbones: tuple[str, str, str]
    """(family backbone, paper backbone, tiny backbone)."""
    cfg_calls: int
    """Network calls per sample and denoising step: 1 for FLUX's distilled guidance, 2 for SD3's and Wan's CFG."""

    @property
    def mod(self):
        return importlib.import_module(f"opgrpo_bench.tasks.{self.module}")

    @property
    def env(self) -> str:
        return getattr(self.mod, self.weights).env


FAMILIES = {
    "sd3": Family("sd3_tasks", "SD35M", "tiny-sd3-jpeg-v1", "tiny_folder",
                  {"ocr-sd35m-v1": "OCR_SD35M_V1", "ocr-sd35m-smoke-v1": "OCR_SD35M_SMOKE_V1"},
                  ("sd3", "sd35m", "tiny-sd3"), cfg_calls=2),
    "flux": Family("flux_tasks", "FLUX_DEV", "tiny-flux-jpeg-v1", "tiny_flux_folder",
                   {"pickscore-flux-v1": "PICKSCORE_FLUX_V1", "pickscore-flux-smoke-v1": "PICKSCORE_FLUX_SMOKE_V1"},
                   ("flux", "flux1-dev", "tiny-flux"), cfg_calls=1),
    "wan": Family("wan_tasks", "WAN21", "tiny-wan-video-v1", "tiny_wan_folder",
                  {"video-ocr-wan21-v1": "VIDEO_OCR_WAN21_V1", "video-ocr-wan21-smoke-v1": "VIDEO_OCR_WAN21_SMOKE_V1"},
                  ("wan", "wan21-t2v-1.3b", "tiny-wan"), cfg_calls=2),
}


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture()
def no_family_weights(family: Family, no_weights) -> Family:
    no_weights(family.module, family.env, family.tasks)
    return family


@pytest.fixture()
def tiny(family: Family, cache_dir: Path, request: pytest.FixtureRequest) -> Family:
    request.getfixturevalue(family.tiny_folder)
    return family


def _lora_b(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors")
    return {k: v for k, v in weights.items() if "lora_B" in k}


# -- the tiny task -----------------------------------------------------------------------------------
TINY_TASKS = {"sd3": "tiny-sd3-jpeg-v1", "flux": "tiny-flux-jpeg-v1", "wan": "tiny-wan-video-v1"}
"""Every family's tiny task (SD3's included), registered under ``tiny-<family>`` too, on backbone ``tiny-<family>``."""


@pytest.mark.parametrize("name", sorted(TINY_TASKS))
def test_tiny_task_spec(name: str):
    """The tiny task's spec: its alias, its tiny backbone, and held-out eval prompts (the family's own
    reward and guidance are checked in test_<family>_tasks.py)."""
    from opgrpo_bench.tasks.spec import TaskSpec

    spec = TASKS.get(TINY_TASKS[name])
    assert isinstance(spec, TaskSpec) and spec.id == TINY_TASKS[name] and spec.version == "v1"
    assert TASKS.get(f"tiny-{name}") is spec and spec.backbone == f"tiny-{name}"
    assert len(spec.train_prompts) >= 4 and len(spec.eval_prompts) >= 2
    assert not {p.text for p in spec.train_prompts} & {p.text for p in spec.eval_prompts}


@pytest.mark.train
@pytest.mark.parametrize("algorithm", ["flow-grpo", "op-grpo"])
def test_tiny_task_trains_two_steps(tiny: Family, tmp_path: Path, algorithm: str):
    """Two optimizer steps through the runner: records complete, the family's network calls per sample and
    step, and the saved adapters moved away from their zero start (lora_B starts at 0)."""
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import find_run_dir, run_one

    end = run_one(tiny.tiny_task, algorithm, seed=0, out=tmp_path, steps=2, sets=SMALL, resume=False)
    run_dir = find_run_dir(tmp_path, tiny.tiny_task, algorithm, 0)
    records = read_records(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    evals = [r for r in records if r["type"] == "eval"]
    assert end["type"] == "run_end" and end["steps"] == 2
    assert [r["step"] for r in steps] == [1, 2] and [r["step"] for r in evals] == [0, 2]
    # rollout: 2 groups x 4 samples x 4 steps at cfg_calls each, plus the updates (fewer than the rollout)
    rollout = 2 * 4 * 4 * tiny.cfg_calls
    assert rollout < steps[-1]["nfe"] < 2 * rollout
    assert all(-5.0 < e["score"] < 0.0 for e in evals)  # minus a 32x32 JPEG's size (per frame) in kB
    lora_b = _lora_b(run_dir)
    assert lora_b and any(v.abs().max() > 0 for v in lora_b.values())
    assert all(k.startswith("transformer.") for k in lora_b)  # diffusers' LoRA format


@pytest.mark.train
def test_tiny_adapter_loads_into_the_pipeline(tiny: Family, tmp_path: Path):
    """The pipeline's ``load_lora_weights`` takes the run's EMA adapter; evaluating that pipeline's
    transformer gives the run's last eval score (the adapter format is loadable, rank and alpha included)."""
    from opgrpo_bench.evaluation import Evaluator
    from opgrpo_bench.registry import REWARDS
    from opgrpo_bench.results import read_records
    from opgrpo_bench.runner import find_run_dir, run_one

    run_one(tiny.tiny_task, "flow-grpo", seed=0, out=tmp_path, steps=2, sets=SMALL, resume=False)
    run_dir = find_run_dir(tmp_path, tiny.tiny_task, "flow-grpo", 0)
    records = read_records(run_dir / "metrics.jsonl")
    train = records[0]["config"]["train"]
    task = TASKS.get(tiny.tiny_task)
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


# -- the paper tasks without their files -------------------------------------------------------------
def test_paper_task_without_prompt_files_fails_with_one_line(no_family_weights: Family,
                                                            monkeypatch: pytest.MonkeyPatch):
    import diffusers

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("a pipeline was loaded")))
    full, smoke = no_family_weights.tasks
    with pytest.raises(MissingWeightsError) as info:
        TASKS.get(full)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    assert PROMPTS_ENV in message and no_family_weights.env in message  # both missing, one line
    assert full in message and smoke in message


@pytest.mark.parametrize("source,expected", [(None, "not in the Hugging Face cache"), ("nope", "does not exist")])
def test_paper_backbone_without_weights_fails_fast(no_family_weights: Family, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, source: str | None,
                                                   expected: str):
    weights = getattr(no_family_weights.mod, no_family_weights.weights)
    if source:
        monkeypatch.setenv(weights.env, str(tmp_path / source))
    _, smoke = no_family_weights.tasks
    with pytest.raises(MissingWeightsError) as info:
        TASKS.get(smoke).build_backbone()
    message = str(info.value)
    assert "\n" not in message and expected in message and weights.env in message and weights.what in message
    assert weights.missing() == message


def test_family_backbones_are_registered(family: Family):
    generic, paper, tiny = family.backbones
    assert {generic, paper, tiny} <= set(BACKBONES.names())
    assert BACKBONES.entry(paper).meta["external_weights"] and not BACKBONES.entry(tiny).meta["external_weights"]


@pytest.mark.parametrize("which", [0, 1], ids=["full", "smoke"])
def test_cli_run_prints_one_line_and_exits_2(no_family_weights: Family, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             which: int):
    """`opgrpo-bench run --task <paper task>` without weights (and prompt files): one error line, exit code 2
    (in process: the console script's ``main``). The full task fails while its spec is built (prompt
    files), before anything else is printed; the smoke task when its reward or backbone is built, after the
    CLI's progress line; no results file is written."""
    from opgrpo_bench import cli

    task_id = list(no_family_weights.tasks)[which]
    monkeypatch.setattr("sys.argv", ["opgrpo-bench", "run", "--task", task_id, "--out", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0]
    if which == 0:
        assert lines == errors and PROMPTS_ENV in errors[0] and no_family_weights.env in errors[0]
    else:  # the first missing piece: the model's weights, or the reward's (PickScore) checked before them
        assert no_family_weights.env in errors[0] or "not in the Hugging Face cache" in errors[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.jsonl"))
