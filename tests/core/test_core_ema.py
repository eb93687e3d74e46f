"""The EMA of the trainable weights: Flow-GRPO's warm-up decay and update interval, hand-computed."""

import pytest
import torch

from opgrpo_bench.core.ema import ParameterEMA, ema_decay_at


def test_decay_warms_up_then_caps():
    assert ema_decay_at(1, 0.9) == pytest.approx(0.1)
    assert ema_decay_at(9, 0.9) == pytest.approx(0.5)
    assert ema_decay_at(81, 0.9) == pytest.approx(0.9)
    assert ema_decay_at(1000, 0.9) == 0.9


def test_updates_only_on_the_interval_with_hand_computed_values():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = ParameterEMA([p], decay=0.9, update_interval=2)
    with torch.no_grad():
        p.fill_(1.0)
    ema.step([p], 1)  # not on the interval
    assert torch.equal(ema.shadow[0], torch.zeros(2))
    ema.step([p], 2)  # d = 2/11
    assert ema.shadow[0][0].item() == pytest.approx(1 - 2 / 11)
    with torch.no_grad():
        p.fill_(3.0)
    ema.step([p], 4)  # d = 4/13
    expected = 4 / 13 * (1 - 2 / 11) + (1 - 4 / 13) * 3
    assert ema.shadow[0][0].item() == pytest.approx(expected)
    assert ema.updates == 2


def test_applied_swaps_in_the_average_and_restores_the_weights():
    p = torch.nn.Parameter(torch.full((3,), 5.0))
    ema = ParameterEMA([p], decay=0.9)
    ema.shadow[0].fill_(2.0)
    with ema.applied([p]):
        assert torch.equal(p.detach(), torch.full((3,), 2.0))
    assert torch.equal(p.detach(), torch.full((3,), 5.0))


def test_state_round_trip():
    p = torch.nn.Parameter(torch.ones(2))
    ema = ParameterEMA([p], decay=0.9, update_interval=8)
    ema.step([p], 8)
    other = ParameterEMA([torch.nn.Parameter(torch.zeros(2))], decay=0.9, update_interval=8)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], ema.shadow[0]) and other.updates == 1
