"""opgrpo-bench plan: the planner's arithmetic, its measurements on the meta device, and the command line.

The plans here are of depth-reduced variants (``depth``), which run in seconds; the full models are what
``opgrpo-bench plan TASK`` prints (README) and the same code.
"""

import sys

import pytest

from opgrpo_bench.capacity.estimate import GIB, build_plan
from opgrpo_bench.capacity.models import PLAN_TASKS, conditioning, meta_backbone, training_call
from opgrpo_bench.capacity.report import render
from opgrpo_bench.capacity.tracker import LiveBytes, gpu_attention
from opgrpo_bench.errors import UserError


@pytest.fixture(scope="module")
def sd3_plan():
    return build_plan("ocr-sd35m-v1", depth=2, num_processes=2)


def test_plan_reads_the_task_settings(sd3_plan):
    s = sd3_plan.settings
    # Flow-GRPO's SD3.5-M recipe (tasks/sd3_tasks.py), resolved as `run` would without the prompt files
    assert (s["samples"], s["num_steps"], s["micro_batch"], s["guidance"], s["lora_rank"]) == (1152, 10, 8, 4.5, 32)
    assert sd3_plan.trained_steps == 9 and s["beta"] == 0.04 and sd3_plan.iterations == 1000
    assert set(sd3_plan.weights) == {"transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"}
    # the trajectories: 1152 samples x 11 latents [16, 64, 64] in float32
    assert sd3_plan.trajectories == 1152 * 11 * 16 * 64 * 64 * 4


def test_activation_memory_is_linear_in_the_rows(sd3_plan):
    """The plan's line through 1 and 2 samples predicts a third point exactly (measured directly)."""
    geometry = PLAN_TASKS["ocr-sd35m-v1"].geometry()
    backbone = meta_backbone(geometry, 32, 64, gradient_checkpointing=False, depth=2)
    backbone._plan_cond = conditioning(geometry, 4)
    with gpu_attention(), LiveBytes() as tracker:
        training_call(backbone, 4, 4.5, 0.7, True)
    assert tracker.peak == pytest.approx(sd3_plan.train[False].peak(4), rel=0.01)
    # checkpointing keeps block inputs and one block at a time (at depth 2 that is most of the call)
    assert sd3_plan.train[True].peak(8) < sd3_plan.train[False].peak(8)


def test_gpu_attention_keeps_no_attention_matrix():
    """Without the fused kernel the meta run would keep [B, H, L, L] scores; with it, only [B, H, L] rows."""
    import torch

    q = torch.empty((1, 4, 1024, 64), device="meta", requires_grad=True)
    for fused in (False, True):
        with LiveBytes() as tracker:
            if fused:
                with gpu_attention():
                    torch.nn.functional.scaled_dot_product_attention(q, q, q)
            else:
                torch.ops.aten._scaled_dot_product_attention_math(q, q, q)
        if fused:
            assert tracker.peak < 4 * 1024 * 1024 * 4 / 4  # far below one fp32 score matrix
        else:
            assert tracker.peak >= 4 * 1024 * 1024 * 4


def test_peaks_fsdp_and_largest_micro_batch_are_consistent(sd3_plan):
    p = sd3_plan
    tr = p.weights["transformer"][1]
    # FSDP: half the frozen transformer per rank, plus two gathered blocks (at depth 2 that is no saving;
    # at full depth, 24 blocks, it is)
    assert p.frozen_bytes(True) - p.frozen_bytes(False) == -tr + -(-tr // 2) + 2 * p.largest_block
    p.gpu_memory_gib = 20.0
    best = p.largest_micro_batch(False, False)
    assert 0 < best < p.settings["share_rows"]
    assert p.peak(best, False, False) <= 20 * GIB < p.peak(best + 1, False, False)
    assert p.largest_micro_batch(True, False) >= best
    p.gpu_memory_gib = 80.0


def test_flops_follow_the_iteration(sd3_plan):
    p, s = sd3_plan, sd3_plan.settings
    f = p.flops
    assert f["rollout"] == pytest.approx(s["samples"] * (s["num_steps"] * p.sample.flops_per_sample + p.text_flops))
    # training: fwd + bwd of each trained pair, plus the reference's no-grad call (beta > 0)
    per_pair = p.train[False].flops_per_sample + p.sample.flops_per_sample
    assert f["training"] == pytest.approx(s["samples"] * 9 * per_pair)
    # frozen weights: the backward computes input gradients only (about one forward), plus LoRA's weight grads
    assert 1.5 < p.train[False].flops_per_sample / p.sample.flops_per_sample < 3
    assert p.seconds_per_iteration == pytest.approx(sum(f.values()) / (2 * p.peak_tflops * 1e12 * p.mfu))
    text = render(p)
    assert "largest micro_batch that fits" in text and "with FSDP over 2" in text and "GPU-hours" in text


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="real-architecture tasks only"):
        build_plan("digits-v1")
    with pytest.raises(UserError, match="--fsdp"):
        build_plan("ocr-sd35m-v1", fsdp=True)
    with pytest.raises(UserError, match="unknown"):
        build_plan("ocr-sd35m-v1", sets=["no_such_setting=1"], depth=1)


def _cli(monkeypatch, capsys, *args):
    """``opgrpo-bench plan ARGS`` in this process: (exit code, stdout, stderr)."""
    from opgrpo_bench import cli

    monkeypatch.setattr(sys, "argv", ["opgrpo-bench", "plan", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as done:
        code = done.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_the_plan_and_refuses_in_one_line(monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "video-ocr-wan21-v1", "--depth", "1", "--set",
                          "gradient_checkpointing=true")
    assert code == 0, err
    assert "largest micro_batch that fits" in out and "fits:" in out and "GPU-hours" in out
    code, out, err = _cli(monkeypatch, capsys, "video-ocr-wan21-v1", "--depth", "1", "--gpu-memory", "4")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: video-ocr-wan21-v1 cannot fit 4 GiB")
    code, _, err = _cli(monkeypatch, capsys, "digits-v1")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
