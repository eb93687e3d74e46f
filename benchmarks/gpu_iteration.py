"""One Flow-GRPO iteration on an SD3.5-Medium-shaped transformer: the project's trainer against a plain loop.

    python benchmarks/gpu_iteration.py [--prompts 4] [--group 8] [--micro-batch 8] [--repeats 3]
    python benchmarks/gpu_iteration.py --tiny        # a tiny transformer on CPU (what the test runs)

The transformer is built from SD3.5-Medium's configuration with random weights (nothing is downloaded;
24 MMDiT-X layers, 64x64 latents = 512 px, 205 text tokens = 77 CLIP + 128 T5 as in Flow-GRPO); the text
encoders are replaced by fixed random embeddings, the VAE and the reward by a cheap function of the
latents, because neither is what is being timed. One iteration = P x G samples with CFG (4.5) over 10 SDE
steps, then one optimizer step over the 9 trained steps (beta = 0: no reference forward, in both).

- "trainer": :class:`opgrpo_bench.trainer.Trainer` (the code every run uses: micro-batched sampling
  whose calls the training forward repeats, LoRA r32, fp32 LoRA and SDE math, bf16 weights on a GPU).
- "eager": a plain loop over the same diffusers transformer doing the same arithmetic: the whole batch
  per call, the same SDE step and clipped loss from :mod:`opgrpo_bench.core`.

Prints seconds per iteration (median over ``--repeats`` after one warm-up), images per second, peak GPU
memory and the trainer/eager time ratio. Run it on a GPU for real numbers; on a CPU only ``--tiny`` is
sensible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SD35M = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
             num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
             pooled_projection_dim=2048, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
             qk_norm="rms_norm")
SD35M_LATENT, SD35M_TOKENS = (16, 64, 64), 205
TINY = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16,
            pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm")
TINY_LATENT, TINY_TOKENS = (4, 8, 8), 8
GUIDANCE, NOISE_LEVEL, STEPS, CLIP = 4.5, 0.7, 10, 1e-4


class RandomText:
    """Fixed random embeddings per prompt (seeded by its text), in place of the three text encoders."""

    def __init__(self, tokens: int, width: int, pooled: int, device: torch.device, dtype: torch.dtype):
        self.tokens, self.width, self.pooled, self.device, self.dtype = tokens, width, pooled, device, dtype

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
            embeds.append(torch.randn((self.tokens, self.width), generator=g))
            pooled.append(torch.randn(self.pooled, generator=g))
        return (torch.stack(embeds).to(self.device, self.dtype), torch.stack(pooled).to(self.device, self.dtype))


class LatentReward:
    """A cheap stand-in reward: minus the mean absolute value of each decoded sample."""

    name = "bench-latent-magnitude"
    higher_is_better = True
    range = (-10.0, 0.0)

    def __call__(self, images, prompts, metadata=None):
        from opgrpo_bench.rewards.base import RewardOutput

        return RewardOutput(scores=-images.float().abs().flatten(1).mean(1).cpu(), components={})


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from opgrpo_bench.backbones.sd3 import SD3Backbone

    cfg, latent, tokens = (TINY, TINY_LATENT, TINY_TOKENS) if tiny else (SD35M, SD35M_LATENT, SD35M_TOKENS)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**cfg).to(device, dtype)
    text = RandomText(tokens, cfg["joint_attention_dim"], cfg["pooled_projection_dim"], device, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return SD3Backbone(transformer, text, scheduler, latent_shape=latent)


def time_trainer(backbone, prompts: list[str], P: int, G: int, micro_batch: int, repeats: int) -> list[float]:
    from opgrpo_bench.algorithms import PRESETS
    from opgrpo_bench.registry import REWARDS
    from opgrpo_bench.tasks.spec import Prompt, TaskSpec
    from opgrpo_bench.config import TrainConfig
    from opgrpo_bench.trainer import Trainer

    if "bench-latent-magnitude" not in REWARDS:
        REWARDS.register("bench-latent-magnitude", LatentReward, description="benchmark stand-in")

    class BenchTask(TaskSpec):
        def build_backbone(self):
            return backbone

    task = BenchTask(id="bench-sd35m-shape-v1", description="benchmark", backbone="sd3",
                     reward="bench-latent-magnitude", train_prompts=tuple(Prompt(p) for p in prompts),
                     eval_prompts=(Prompt(prompts[0]),), target=0.0, eval_noises_per_prompt=1)
    cfg = TrainConfig(steps=10**6, prompts_per_iter=P, group_size=G, num_steps=STEPS, guidance=GUIDANCE,
                      eval_guidance=GUIDANCE, eval_num_steps=2, eval_every=10**9, optimizer_steps_per_iter=1,
                      micro_batch=micro_batch, lr=1e-4, lora_rank=32, lora_alpha=64, ema_decay=0.0)
    algo = PRESETS["flow-grpo"].build(beta=0.0, clip_range=CLIP)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, algo, cfg, tmp)
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            _sync(trainer.device)
            t0 = time.perf_counter()
            trainer.iteration()
            _sync(trainer.device)
            times.append(time.perf_counter() - t0)
        trainer.scorer.close()
    return times[1:]


def time_eager(backbone, prompts: list[str], P: int, G: int, repeats: int) -> list[float]:
    """The same iteration as a plain loop: whole batch per call, no micro-batches, no worker threads."""
    from opgrpo_bench.core.advantages import group_advantages
    from opgrpo_bench.core.losses import clipped_surrogate
    from opgrpo_bench.core.sde import sde_step_with_logprob

    device = backbone.device
    torch.manual_seed(0)
    backbone.add_lora(32, 64)
    params = backbone.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    sigmas = backbone.sigmas(STEPS).to(device)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        group = [prompts[i % len(prompts)] for i in range(P)]
        cond = backbone.encode([p for p in group for _ in range(G)])
        n = P * G
        x = torch.randn((n, *backbone.latent_shape), generator=gen).to(device)
        xs, logps = [x], []
        with torch.no_grad():
            for k in range(STEPS):
                v = backbone.velocity(x, sigmas[k].expand(n), cond, GUIDANCE)
                x, logp, _, _ = sde_step_with_logprob(v, sigmas[k].expand(n), sigmas[k + 1].expand(n), x,
                                                      NOISE_LEVEL, generator=gen, sigma_max=sigmas[1])
                xs.append(x)
                logps.append(logp)
        rewards = -x.float().abs().flatten(1).mean(1)
        adv = group_advantages(rewards, torch.arange(P, device=device).repeat_interleave(G), global_std=True,
                               clip=5.0).float()
        opt.zero_grad(set_to_none=True)
        for k in range(STEPS - 1):
            v = backbone.velocity(xs[k], sigmas[k].expand(n), cond, GUIDANCE, detach_uncond=True)
            _, logp, _, _ = sde_step_with_logprob(v, sigmas[k].expand(n), sigmas[k + 1].expand(n), xs[k],
                                                  NOISE_LEVEL, prev_sample=xs[k + 1], sigma_max=sigmas[1])
            pg, _, _ = clipped_surrogate(logp, logps[k], adv, CLIP)
            (pg.mean() / (STEPS - 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times[1:]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny transformer on CPU (seconds)")
    p.add_argument("--prompts", type=int, default=None, help="P (default 4; tiny 2)")
    p.add_argument("--group", type=int, default=None, help="G (default 8; tiny 4)")
    p.add_argument("--micro-batch", type=int, default=None, help="the trainer's micro_batch (default P*G)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --tiny)")
    args = p.parse_args()
    threads = args.threads or (1 if args.tiny else 0)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    P = args.prompts or (2 if args.tiny else 4)
    G = args.group or (4 if args.tiny else 8)
    micro = args.micro_batch or P * G
    prompts = [f"benchmark prompt {i}" for i in range(16)]
    rows = []
    for name in ("trainer", "eager"):
        backbone = build(args.tiny, device, dtype)  # the trainer adds its LoRA itself; the eager loop below
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        ts = time_trainer(backbone, prompts, P, G, micro, args.repeats) if name == "trainer" else \
            time_eager(backbone, prompts, P, G, args.repeats)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        rows.append((name, statistics.median(ts), peak))
        del backbone
        if cuda:
            torch.cuda.empty_cache()
    what = "tiny SD3 transformer (CPU)" if args.tiny else f"SD3.5-M-shaped transformer ({device}, {dtype})"
    print(f"{what}; P={P} G={G} micro_batch={micro}; CFG {GUIDANCE}, {STEPS} SDE steps, 9 trained; "
          f"median of {args.repeats}")
    print(f"{'loop':<10}{'s/iteration':>14}{'images/s':>12}{'peak GPU GiB':>14}{'time / eager':>14}")
    eager = rows[1][1]
    for name, sec, peak in rows:
        print(f"{name:<10}{sec:>14.3f}{P * G / sec:>12.2f}{(f'{peak:.2f}' if peak is not None else '-'):>14}"
              f"{sec / eager:>14.3f}")


if __name__ == "__main__":
    main()
