"""Regenerate the digits-v1 assets (classifier + base flow model) deterministically on CPU.

    python scripts/build_digits_assets.py [--out opgrpo_bench/assets/digits-v1] [--steps 200]

Single-threaded so that the result does not depend on the machine's core count.
"""

import argparse
import json

import torch

from opgrpo_bench.backbones.digits import DIGITS_ASSETS
from opgrpo_bench.pretraining.digits import build_assets

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DIGITS_ASSETS))
    parser.add_argument("--steps", type=int, default=200, help="flow-matching pretraining steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(build_assets(args.out, steps=args.steps, seed=args.seed), indent=2))
