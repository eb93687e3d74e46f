"""The gold digit classifier: a different architecture on the other split, read beside the reward."""

import json

import pytest
import torch

from opgrpo_bench.registry import REWARDS, TASKS
from opgrpo_bench.rewards.digits import (
    ASSETS,
    DigitClassifier,
    GoldDigitClassifier,
    load_classifier,
)
from opgrpo_bench.pretraining.classifiers import train_gold_classifier
from opgrpo_bench.pretraining.common import load_split


def test_gold_is_another_architecture_trained_on_the_other_split():
    gold, info = load_classifier(None, "gold")
    reward, _ = load_classifier(None, "reward")
    assert isinstance(gold, GoldDigitClassifier) and isinstance(reward, DigitClassifier)
    assert not set(gold.state_dict()) & set(reward.state_dict())
    assert info["trained_on"].startswith("digits split 'test'") and info["n_train"] == 360
    x_train, y_train, _, _ = load_split()  # the split the reward classifier trained on
    with torch.no_grad():
        acc = (gold(x_train).argmax(-1) == y_train).float().mean().item()
    assert acc == pytest.approx(info["accuracy"], abs=2e-3) and acc > 0.95


@pytest.mark.train
def test_gold_training_is_seeded():
    _, _, x_test, y_test = load_split()
    a, acc_a = train_gold_classifier(x_test[:64], y_test[:64], x_test[64:128], y_test[64:128], epochs=2)
    b, acc_b = train_gold_classifier(x_test[:64], y_test[:64], x_test[64:128], y_test[64:128], epochs=2)
    assert acc_a == acc_b
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("name", ["digit-classifier", "digit-pair", "digit-number"])
def test_every_digit_reward_reads_with_either_classifier(name):
    width = {"digit-classifier": 8, "digit-pair": 16, "digit-number": 24}[name]
    _, _, x_test, y_test = load_split()
    image = torch.cat(list(x_test[: width // 8].split(1)), dim=-1)  # [1, 1, 8, width]
    digits = "".join(str(int(d)) for d in y_test[: width // 8])
    prompt = {"digit-classifier": "a photo of the digit {}", "digit-pair": "a {} left of a {}",
              "digit-number": "the number {}{}{}"}[name].format(*digits)
    for classifier in ("reward", "gold"):
        out = REWARDS.get(name)(classifier=classifier)(image, [prompt])
        assert out.scores.shape == (1,) and 0.0 <= float(out.scores[0]) <= 1.0
        if classifier == "gold" and name != "digit-classifier":  # the gold CNN trained on these very images
            assert float(out.scores[0]) == 1.0
    with pytest.raises(ValueError, match="classifier must be one of"):
        REWARDS.get(name)(classifier="other")


def test_the_digits_tasks_name_a_gold_reward_that_is_not_their_reward():
    for task_id in ("digits-v1", "digits-sparse-v1", "digits-pair-v1", "digits-number-v1", "digits-video-v1"):
        task = TASKS.get(task_id)
        assert task.gold_reward is not None
        assert json.dumps(task.gold_reward_args, sort_keys=True) != json.dumps(task.reward_args, sort_keys=True)
        assert "gold" in json.dumps(task.gold_reward_args)
    assert (ASSETS / "gold_classifier.safetensors").exists()
