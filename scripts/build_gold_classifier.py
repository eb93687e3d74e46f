"""Regenerate the gold digit classifier (``assets/digits-v1/gold_classifier.*``) deterministically on CPU.

    python scripts/build_gold_classifier.py [--out opgrpo_bench/assets/digits-v1] [--epochs 300]

The gold classifier is a CNN trained on the 20% split of scikit-learn's digits that the reward classifier
never saw, and its accuracy is measured on the 80% the reward classifier trained on. The tasks report
it beside the reward and never train on it. Single-threaded so that the result does not depend on the
machine's core count.
"""

import argparse
import json
from pathlib import Path

import torch

from opgrpo_bench.pretraining.classifiers import build_gold_assets
from opgrpo_bench.rewards.digits import ASSETS

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ASSETS))
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(build_gold_assets(Path(args.out), args.epochs, args.seed), indent=2))
