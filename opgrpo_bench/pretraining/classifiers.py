"""The digit classifiers the digits rewards read with (:mod:`opgrpo_bench.rewards.digits`), trained on
scikit-learn's digits: the reward classifier (an MLP, on the 80% training split) and the gold classifier
(a CNN, on the other 20%, never trained on by the tasks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opgrpo_bench.pretraining.common import load_split
from opgrpo_bench.rewards.digits import ASSETS, DigitClassifier, GoldDigitClassifier, load_classifier


def train_digit_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                           y_test: torch.Tensor, seed: int = 0, epochs: int = 400) -> tuple[DigitClassifier, float]:
    """Train on images in [0, 1] [N, 1, 8, 8] with labels [N]; returns (model in eval mode, held-out accuracy).

    Light pixel-noise augmentation makes the classifier less brittle on generated images.
    """
    torch.manual_seed(seed)
    return _fit(DigitClassifier(), x_train, y_train, x_test, y_test, seed, epochs, batch=256, shift=False)


def _fit(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
         seed: int, epochs: int, batch: int, shift: bool) -> tuple[Any, float]:
    """The classifiers' training loop: AdamW, seeded shuffles, pixel noise (and one-pixel shifts when
    ``shift``); returns (model in eval mode, accuracy on the test images)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    n = x_train.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            x = _shift(x_train[idx], gen) if shift else x_train[idx]
            x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
            loss = nn.functional.cross_entropy(model(x), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
    return model, acc



def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of [N, 1, 8, 8] shifted by -1, 0 or +1 pixel in each direction (zeros shifted in)."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(3, (2, x.shape[0]), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(x.shape[0])])


def train_gold_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                          y_test: torch.Tensor, seed: int = 0,
                          epochs: int = 300) -> tuple[GoldDigitClassifier, float]:
    """Train the gold CNN on images in [0, 1] [N, 1, 8, 8] with labels [N]; returns (model in eval mode,
    accuracy on the test images).

    Called with the digits split the other way round (trained on the 20% test split, measured on the 80%
    the reward classifier trained on). Shifts of one pixel and pixel noise make up for the small set.
    """
    torch.manual_seed(seed)
    return _fit(GoldDigitClassifier(), x_train, y_train, x_test, y_test, seed, epochs, batch=128, shift=True)


def build_classifier_assets(out: str | Path = ASSETS, seed: int = 0) -> dict[str, Any]:
    """Train the reward classifier on the training split and save ``classifier.safetensors`` and
    ``classifier.json`` (held-out accuracy, split sizes, seed) under ``out``; returns that record."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_split()
    classifier, acc = train_digit_classifier(x_train, y_train, x_test, y_test, seed=seed)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, out / "classifier.safetensors")
    info = {"heldout_accuracy": acc, "n_train": len(y_train), "n_test": len(y_test), "seed": seed}
    (out / "classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def build_gold_assets(out: str | Path = ASSETS, epochs: int = 300, seed: int = 0) -> dict[str, Any]:
    """Train the gold CNN on the 20% split the reward classifier never saw, measure it on the 80% it trained
    on, and save ``gold_classifier.safetensors`` and ``gold_classifier.json`` under ``out`` (with the
    agreement of both classifiers on the 20% split; the reward classifier is the shipped one)."""
    from safetensors.torch import save_file

    out = Path(out)
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
