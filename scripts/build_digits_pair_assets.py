"""Regenerate the digits-pair-v1 base model (tiny SD3 transformer + CLIP text encoder) on CPU.

    python scripts/build_digits_pair_assets.py [--out opgrpo_bench/assets/digits-pair-v1] [--steps 700] [--jitter-steps 100]

Single-threaded so that the result does not depend on the machine's core count (about 1-2 minutes).
The reward reuses the digits-v1 classifier shipped in ``opgrpo_bench/assets/digits-v1``.
"""

import argparse
import json

import torch

from opgrpo_bench.backbones.digits import PAIR_ASSETS
from opgrpo_bench.pretraining.digits_pair import JITTER_STEPS, PRETRAIN_LR, PRETRAIN_STEPS, build_pair_assets

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(PAIR_ASSETS))
    parser.add_argument("--steps", type=int, default=PRETRAIN_STEPS, help="flow-matching pretraining steps")
    parser.add_argument("--jitter-steps", type=int, default=JITTER_STEPS,
                        help="the last this many steps shift each digit by up to 1 px")
    parser.add_argument("--lr", type=float, default=PRETRAIN_LR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(build_pair_assets(args.out, steps=args.steps, jitter_steps=args.jitter_steps, seed=args.seed,
                                       lr=args.lr), indent=2))
