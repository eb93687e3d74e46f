"""The 5-D video stub through the samplers and the trainer: video latents [B, C, F, H, W] end to end.

The task below is built here, not registered: it only carries the stub through the trainer (a per-frame
JPEG reward on 8x8 frames), and its numbers mean nothing.
"""

from __future__ import annotations

import pytest
import torch

from opgrpo_bench.registry import ALGORITHMS, BACKBONES
from opgrpo_bench.results import read_records
from opgrpo_bench.sampling import sample_ode, sample_sde
from opgrpo_bench.tasks.spec import Prompt, TaskSpec
from opgrpo_bench.trainer import Trainer
from opgrpo_bench.validation import build_settings

STUB_TASK = TaskSpec(
    id="stub-video-test-v1",
    description="TEST: the video stub with a per-frame JPEG-compressibility reward",
    backbone="stub-video",
    reward="video",
    reward_args={"reward": "jpeg-compressibility"},
    train_prompts=tuple(Prompt(p) for p in ("a red ball", "a blue sky", "a green field", "a white cup")),
    eval_prompts=(Prompt("a yellow flower"), Prompt("a black cat")),
    eval_noises_per_prompt=1,
    target=0.0,
    budget_steps=2,
    eval_every=2,
    # CFG in rollouts and training, two blocks per optimizer step (micro_batch 2 < 4 rows per share)
    train_defaults=dict(prompts_per_iter=2, group_size=4, num_steps=3, eval_num_steps=3, guidance=2.0,
                        eval_guidance=2.0, micro_batch=2, lora_rank=2, lora_alpha=4, lr=1e-2, num_threads=1),
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (``one_thread`` in tests/conftest.py)."""


def test_samplers_keep_the_video_shape():
    bb = BACKBONES.get("stub-video")()
    n, steps = 3, 4
    noise = torch.randn((n, *bb.latent_shape), generator=torch.Generator().manual_seed(0))
    cond = bb.encode(["a red ball", "a blue sky", ""])
    sigmas = bb.sigmas(steps)
    traj = sample_sde(bb, cond, noise, sigmas, 0.7, 2.0, torch.Generator().manual_seed(1))
    assert traj.latents.shape == (n, steps + 1, *bb.latent_shape) and traj.log_probs.shape == (n, steps)
    assert torch.isfinite(traj.log_probs).all() and torch.equal(traj.latents[:, 0], noise)
    final = sample_ode(bb, cond, noise, sigmas, 2.0, batch_size=2)
    assert final.shape == noise.shape
    videos = bb.decode(final)
    C, F, H, W = bb.latent_shape
    assert videos.shape == (n, F, C, H, W)
    # forced prefixes (OP-GRPO's replay) on 5-D latents: a forced row follows its stored states
    forced_len = torch.tensor([2, 0, 0])
    replay = sample_sde(bb, cond, noise, sigmas, 0.7, 2.0, torch.Generator().manual_seed(2),
                        forced=traj.latents[:, :3], forced_len=forced_len)
    assert torch.equal(replay.latents[0, :3], traj.latents[0, :3])
    assert not torch.equal(replay.latents[1], traj.latents[1])


@pytest.mark.train
@pytest.mark.parametrize("algorithm, steps, sets", [
    ("flow-grpo", 2, {}),
    ("op-grpo", 4, {"replay_proportion": "0.5"}),  # the second iteration replays stored 5-D trajectories
])
def test_trainer_iterations_update_the_lora_weights(tmp_path, algorithm: str, steps: int, sets: dict[str, str]):
    train_cfg, algo = build_settings(STUB_TASK, ALGORITHMS.get(algorithm), algorithm, 0, steps, sets)
    trainer = Trainer(STUB_TASK, algo, train_cfg, tmp_path / "run", algorithm_name=algorithm)
    named = dict(trainer.backbone.transformer.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    end = trainer.run("stub-video-test")
    lora = [n for n in named if "lora_" in n]
    assert lora and {id(named[n]) for n in lora} == {id(p) for p in trainer.params}
    assert any(not torch.equal(before[n], named[n]) for n in lora)
    assert all(torch.equal(before[n], named[n]) for n in named if "lora_" not in n)
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    step_records = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in step_records] == list(range(1, steps + 1))
    assert all(r["train/trained_pairs"] > 0 for r in step_records)
    if algorithm == "op-grpo":  # replayed samples were trained on (their diagnostics are recorded)
        assert any("op/logw_min" in r for r in step_records)
    evals = [r for r in records if r["type"] == "eval"]
    assert evals[0]["step"] == 0 and all(r["score"] < 0 for r in evals)  # minus the JPEG size in kB
    assert end["steps"] == steps
