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

from opgrpo_bench.rewards.digits import ASSETS, load_classifier, train_gold_classifier
from opgrpo_bench.tasks.digits import load_split


def build(out: Path, epochs: int, seed: int) -> dict:
    from safetensors.torch import save_file

    x_train, y_train, x_test, y_test = load_split()
    model, acc = train_gold_classifier(x_test, y_test, x_train, y_train, seed=seed, epochs=epochs)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "gold_classifier.safetensors")
    reward_model, _ = load_classifier(None, "reward")  # the shipped reward classifier
    with torch.no_grad():
        agree_test = (model(x_test).argmax(-1) == reward_model(x_test).argmax(-1)).float().mean().item()
    info = {"architecture": "GoldDigitClassifier (CNN)", "trained_on": "digits split 'test' (20%)",
            "accuracy_on": "digits split 'train' (80%)", "accuracy": acc, "n_train": int(len(y_test)),
            "n_eval": int(len(y_train)), "epochs": epochs, "seed": seed,
            "agreement_with_reward_classifier_on_test_split": agree_test}
    (out / "gold_classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ASSETS))
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(build(Path(args.out), args.epochs, args.seed), indent=2))
