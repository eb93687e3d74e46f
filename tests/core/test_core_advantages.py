"""Group advantages and the zero-std filter (ALGORITHMS.md section 2), against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opgrpo_bench.core.advantages import finite_group_mask, group_advantages, group_index, nonzero_std_group_mask

# Two groups with unsorted, non-contiguous ids: group 7 = {1, 3} (mean 2), group 3 = {2, 6} (mean 4).
REWARDS = torch.tensor([1.0, 3.0, 2.0, 6.0])
IDS = torch.tensor([7, 7, 3, 3])


def test_global_std_hand_computed() -> None:
    # batch population std of [1, 3, 2, 6] = sqrt(14 / 4) = 1.8708287; deviations from group means (-1, 1, -2, 2)
    adv = group_advantages(REWARDS, IDS, global_std=True)
    torch.testing.assert_close(adv, torch.tensor([-0.5344939, 0.5344939, -1.0689878, 1.0689878]))
    assert adv.dtype == torch.float32


def test_group_std_hand_computed() -> None:
    # group population stds 1 and 2, plus eps 1e-4
    adv = group_advantages(REWARDS, IDS, global_std=False)
    torch.testing.assert_close(adv, torch.tensor([-1 / 1.0001, 1 / 1.0001, -2 / 2.0001, 2 / 2.0001]))


def test_interleaved_ids_give_the_same_advantages_per_sample() -> None:
    perm = torch.tensor([2, 0, 3, 1])
    for global_std in (True, False):
        adv = group_advantages(REWARDS, IDS, global_std=global_std)
        adv_perm = group_advantages(REWARDS[perm], IDS[perm], global_std=global_std)
        torch.testing.assert_close(adv_perm, adv[perm])


def test_clipping() -> None:
    # one group of 50: 49 zeros and one 100 -> mean 2, population std 14: A = -2/14.0001 and 98/14.0001 = 6.99995
    rewards = torch.zeros(50)
    rewards[17] = 100.0
    ids = torch.zeros(50, dtype=torch.long)
    adv = group_advantages(rewards, ids)
    assert adv[17].item() == 5.0
    torch.testing.assert_close(adv[0], torch.tensor(-0.14285612))
    unclipped = group_advantages(rewards, ids, clip=None)
    torch.testing.assert_close(unclipped[17], torch.tensor(6.99995))
    # a tighter clip on the small example
    torch.testing.assert_close(
        group_advantages(REWARDS, IDS, clip=0.6), torch.tensor([-0.5344939, 0.5344939, -0.6, 0.6])
    )


def test_degenerate_groups_get_zero_advantage_with_group_std() -> None:
    rewards = torch.tensor([4.0, 4.0, 4.0, 9.0, 1.0, 2.0])
    ids = torch.tensor([0, 0, 0, 1, 2, 2])  # group 0 all equal, group 1 a singleton
    adv = group_advantages(rewards, ids, global_std=False)
    torch.testing.assert_close(adv[:4], torch.zeros(4))
    torch.testing.assert_close(adv[4:], torch.tensor([-0.5 / 0.5001, 0.5 / 0.5001]))


def test_matches_flow_grpo_numpy_reference_on_random_groups() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [1, 2, 5, 8, 3]
    ids = torch.cat([torch.full((n,), gid) for gid, n in zip([40, 3, 17, 0, 9], sizes)])
    ids = ids[torch.randperm(ids.numel(), generator=g)]
    rewards = 22.0 + 0.5 * torch.randn(ids.numel(), generator=g, dtype=torch.float64)  # PickScore-like
    r, keys = rewards.numpy(), ids.numpy()
    for global_std in (True, False):
        expected = np.empty_like(r)
        for key in np.unique(keys):
            sel = keys == key
            std = (np.std(r) if global_std else np.std(r[sel])) + 1e-4
            expected[sel] = (r[sel] - np.mean(r[sel])) / std
        expected = np.clip(expected, -5, 5)
        adv = group_advantages(rewards, ids, global_std=global_std)
        assert adv.dtype == torch.float64
        np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_nonzero_std_group_mask() -> None:
    rewards = torch.tensor([1.0, 5.0, 1.0, 2.0, 3.0, 5.0, 7.0])
    ids = torch.tensor([2, 0, 2, 1, 1, 0, 3])  # group 2 {1, 1}, group 0 {5, 5}, group 1 {2, 3}, group 3 {7}
    mask = nonzero_std_group_mask(rewards, ids)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [False, False, False, True, True, False, False]
    # integer rewards are accepted too
    assert nonzero_std_group_mask(torch.tensor([1, 1, 0, 2]), torch.tensor([0, 0, 1, 1])).tolist() == [
        False, False, True, True,
    ]


NAN = float("nan")


def test_nan_rewards_are_left_out_hand_computed() -> None:
    # rewards [1, NaN, 3, 5] in groups [0, 0, 1, 1]: group 0 keeps one finite reward -> no signal (0, 0);
    # batch std over the finite [1, 3, 5] = sqrt(8/3) = 1.6329932; group 1 mean 4 -> -+1 / 1.6330932
    rewards, ids = torch.tensor([1.0, NAN, 3.0, 5.0]), torch.tensor([0, 0, 1, 1])
    adv = group_advantages(rewards, ids)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, -0.6123349, 0.6123349]))
    # per-group std: group 1's population std is 1 -> -+1 / 1.0001
    torch.testing.assert_close(group_advantages(rewards, ids, global_std=False),
                               torch.tensor([0.0, 0.0, -1 / 1.0001, 1 / 1.0001]))
    assert nonzero_std_group_mask(rewards, ids).tolist() == [False, False, True, True]
    assert finite_group_mask(rewards, ids).tolist() == [False, False, True, True]


def test_nan_inside_a_group_leaves_the_rest_of_the_group_alone() -> None:
    # group 0 = {2, NaN, 4} (finite mean 3), group 1 = {1, 1}; batch std over [2, 4, 1, 1]:
    # mean 2, population variance (0 + 4 + 1 + 1) / 4 = 1.5 -> std 1.2247449
    rewards, ids = torch.tensor([2.0, NAN, 4.0, 1.0, 1.0]), torch.tensor([0, 0, 0, 1, 1])
    adv = group_advantages(rewards, ids)
    torch.testing.assert_close(adv, torch.tensor([-1 / 1.2248449, 0.0, 1 / 1.2248449, 0.0, 0.0]))
    assert nonzero_std_group_mask(rewards, ids).tolist() == [True, False, True, False, False]
    assert finite_group_mask(rewards, ids).tolist() == [True, False, True, True, True]


def test_all_nan_rewards_give_zero_advantages() -> None:
    rewards, ids = torch.full((4,), NAN), torch.tensor([0, 0, 1, 1])
    for global_std in (True, False):
        assert group_advantages(rewards, ids, global_std=global_std).tolist() == [0.0] * 4
    assert not nonzero_std_group_mask(rewards, ids).any()
    assert not finite_group_mask(rewards, ids).any()


def test_group_index_and_input_checks() -> None:
    index, n = group_index(torch.tensor([10, -3, 10, 4]))
    assert n == 3 and index.tolist() == [2, 0, 2, 1]
    with pytest.raises(TypeError):
        group_advantages(REWARDS, IDS.float())
    with pytest.raises(ValueError):
        group_advantages(REWARDS, IDS[:3])
