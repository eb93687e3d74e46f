"""Regenerate the digits-number-v1 base model (tiny SD3 transformer + CLIP text encoder) on CPU.

    python scripts/build_digits_number_assets.py [--out opgrpo_bench/assets/digits-number-v1] [--steps N]
        [--jitter-steps N] [--lr LR] [--batch-size N] [--scratch] [--seed N]

Single-threaded so that the result does not depend on the machine's core count (defaults: see
``opgrpo_bench.pretraining.digits_number``; about one minute on one idle core). The weights start from the
digits-v1 base model and the reward reuses the digits-v1 classifier, both shipped in
``opgrpo_bench/assets/digits-v1``.
"""

import argparse
import json

import torch

from opgrpo_bench.backbones.digits import DIGITS_ASSETS, NUMBER_ASSETS
from opgrpo_bench.pretraining.digits_number import (
    JITTER_STEPS,
    PRETRAIN_BATCH,
    PRETRAIN_LR,
    PRETRAIN_STEPS,
    build_number_assets,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(NUMBER_ASSETS))
    parser.add_argument("--steps", type=int, default=PRETRAIN_STEPS, help="flow-matching pretraining steps")
    parser.add_argument("--jitter-steps", type=int, default=JITTER_STEPS,
                        help="the last this many steps shift each digit by up to 1 px")
    parser.add_argument("--lr", type=float, default=PRETRAIN_LR)
    parser.add_argument("--batch-size", type=int, default=PRETRAIN_BATCH)
    parser.add_argument("--scratch", action="store_true",
                        help="start from random weights instead of the digits-v1 base model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(build_number_assets(args.out, steps=args.steps, jitter_steps=args.jitter_steps,
                                         seed=args.seed, lr=args.lr, batch_size=args.batch_size,
                                         init_from=None if args.scratch else DIGITS_ASSETS), indent=2))
