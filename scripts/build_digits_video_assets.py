"""Regenerate the digits-video-v1 base model (tiny pixel-space Wan transformer + CLIP text encoder) on CPU.

    python scripts/build_digits_video_assets.py [--out opgrpo_bench/assets/digits-video-v1] [--steps N]
        [--frame-steps N] [--lr LR] [--batch-size N] [--seed N]

Single-threaded so that the result does not depend on the machine's core count: the same torch version
gives the same safetensors bit for bit (defaults: see ``opgrpo_bench.pretraining.digits_video``; about 1.5
minutes on one core). The reward reuses the digits-v1 classifiers shipped in ``opgrpo_bench/assets/digits-v1``.
"""

import argparse
import json

import torch

from opgrpo_bench.backbones.digits import VIDEO_ASSETS
from opgrpo_bench.pretraining.digits_video import (
    FRAME_STEPS,
    PRETRAIN_BATCH,
    PRETRAIN_LR,
    PRETRAIN_STEPS,
    build_video_assets,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(VIDEO_ASSETS))
    parser.add_argument("--steps", type=int, default=PRETRAIN_STEPS, help="flow-matching pretraining steps in all")
    parser.add_argument("--frame-steps", type=int, default=FRAME_STEPS,
                        help="the first this many steps train on the videos' first frames alone")
    parser.add_argument("--lr", type=float, default=PRETRAIN_LR)
    parser.add_argument("--batch-size", type=int, default=PRETRAIN_BATCH)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(build_video_assets(args.out, steps=args.steps, frame_steps=args.frame_steps, seed=args.seed,
                                        lr=args.lr, batch_size=args.batch_size), indent=2))
