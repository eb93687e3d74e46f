"""digits-pair-v1: shipped assets, prompts, the ``digit-pair`` reward on real digits, base-model sampling."""

from __future__ import annotations

import pytest
import torch

from opgrpo_bench.registry import REWARDS, TASKS
from opgrpo_bench.rewards.digits import DigitPairReward, prompted_pair
from opgrpo_bench.backbones import digits as digits_models
from opgrpo_bench.pretraining import digits_pair as pp
from opgrpo_bench.pretraining.common import compose, load_split
from opgrpo_bench.tasks import digits_pair as dp


@pytest.fixture(scope="module")
def reward() -> DigitPairReward:
    return REWARDS.get("digit-pair")()


@pytest.fixture(scope="module")
def backbone():
    return digits_models.load_pair_backbone()


@pytest.fixture(scope="module")
def test_digits(reward: DigitPairReward) -> dict[int, torch.Tensor]:
    """One held-out (test-split) image per digit that the classifier reads correctly, [1, 8, 8] in [0, 1]."""
    _, _, x_test, y_test = load_split()
    with torch.no_grad():
        pred = reward.model(x_test).argmax(-1)
    out = {}
    for d in range(10):
        idx = torch.nonzero((y_test == d) & (pred == d)).flatten()
        out[d] = x_test[int(idx[0])]
    return out


def test_spec_registered_and_consistent() -> None:
    spec = TASKS.get("digits-pair-v1")
    assert spec is TASKS.get("digits-pair") and spec.reward == "digit-pair"
    assert len(spec.train_prompts) == len(spec.eval_prompts) == 90
    train = {(p.meta["left"], p.meta["right"]) for p in spec.train_prompts}
    evals = {(p.meta["left"], p.meta["right"]) for p in spec.eval_prompts}
    assert train == evals == set(dp.PAIRS)  # the same pairs, in the other phrasing
    assert all(" left of " in p.text for p in spec.train_prompts)
    assert all(" right of " in p.text for p in spec.eval_prompts)
    assert spec.target > 0 and spec.budget_steps > 0


def test_every_task_prompt_parses_to_its_metadata() -> None:
    spec = TASKS.get("digits-pair-v1")
    for p in spec.train_prompts + spec.eval_prompts:
        assert prompted_pair(p.text) == (p.meta["left"], p.meta["right"]), p.text


@pytest.mark.parametrize("text, pair", [
    ("a 3 left of a 7", (3, 7)),
    ("a 7 right of a 3", (3, 7)),
    ("A seven right of a three", (3, 7)),
    ("the 0 left of the 9", (0, 9)),
    ("a 5", None),
    ("a cat left of a dog", None),
    ("", None),
])
def test_prompt_parsing(text: str, pair: tuple[int, int] | None) -> None:
    assert prompted_pair(text) == pair


def test_metadata_wins_over_text() -> None:
    assert prompted_pair("a 3 left of a 7", {"left": 1, "right": 2}) == (1, 2)


def test_assets_load(backbone) -> None:
    assert backbone.latent_shape == dp.IMAGE_SHAPE == (1, 8, 16)
    cfg = backbone.transformer.config
    # diffusers crops the position grid to the 4x8 patch grid: the longer side must fit
    assert cfg.pos_embed_max_size * cfg.patch_size >= max(dp.IMAGE_SHAPE[1:])
    assert (digits_models.PAIR_ASSETS / "base_model.json").exists()


def test_real_pair_scores_success_and_swap_fails(reward: DigitPairReward, test_digits) -> None:
    pairs = list(dp.PAIRS)
    images = torch.stack([compose(test_digits[a][None], test_digits[b][None])[0] for a, b in pairs])
    assert images.shape == (90, 1, 8, 16)
    left_of = [f"a {a} left of a {b}" for a, b in pairs]
    right_of = [f"a {b} right of a {a}" for a, b in pairs]
    swapped = [f"a {b} left of a {a}" for a, b in pairs]
    assert torch.equal(reward(images, left_of).scores, torch.ones(90))
    assert torch.equal(reward(images, right_of).scores, torch.ones(90))
    out = reward(images, swapped)
    assert torch.equal(out.scores, torch.zeros(90))
    assert torch.allclose(out.components["p_both"], out.components["p_left"] * out.components["p_right"])
    assert bool((out.components["p_both"] < 0.5).all())


def test_nan_for_unparsable_prompt_and_broken_pixels(reward: DigitPairReward, test_digits) -> None:
    img = compose(test_digits[3][None], test_digits[7][None]).repeat(3, 1, 1, 1)
    img[2] = float("nan")
    out = reward(img, ["a 3 left of a 7", "a handwritten 3", "a 3 left of a 7"])
    assert out.scores[0] == 1.0 and torch.isnan(out.scores[1:]).all()
    assert torch.isnan(out.components["p_left"][1:]).all()
    with pytest.raises(ValueError):
        reward(torch.rand(1, 1, 8, 8), ["a 3 left of a 7"])


def test_batch_invariant_and_deterministic(reward: DigitPairReward) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 8, 16, generator=g)
    prompts = [f"a {i} left of a {(i + 4) % 10}" for i in range(6)]
    full = reward(images, prompts)
    for i in range(6):
        one = reward(images[i : i + 1], prompts[i : i + 1])
        assert torch.equal(one.components["p_both"], full.components["p_both"][i : i + 1])
        assert torch.equal(one.scores, full.scores[i : i + 1])
    again = reward(images, prompts)
    assert torch.equal(again.components["p_both"], full.components["p_both"])


def test_base_model_generates_pairs(backbone, reward: DigitPairReward) -> None:
    from opgrpo_bench.sampling import sample_ode

    prompts = ["a 3 left of a 7", "a 7 right of a 3"]
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = sample_ode(backbone, backbone.encode(prompts), noise, backbone.sigmas(4), 1.0)
    images = backbone.decode(x)
    assert images.shape == (2, 1, 8, 16) and bool(((images >= 0) & (images <= 1)).all())
    scores = reward(images, prompts).scores
    assert bool(((scores == 0) | (scores == 1)).all())


@pytest.mark.train
def test_pretraining_is_deterministic() -> None:
    torch.set_num_threads(1)
    # one centred step, then one jittered step: both phases
    a = pp.pretrain_pair_model(steps=2, jitter_steps=1, batch_size=8)[0].state_dict()
    b = pp.pretrain_pair_model(steps=2, jitter_steps=1, batch_size=8)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_jitter_shifts_by_at_most_one_pixel() -> None:
    img = torch.full((64, 1, 8, 8), -1.0)
    img[:, :, 3:5, 3:5] = 1.0  # a 2x2 blob in the centre
    out = pp.jitter(img, torch.Generator().manual_seed(0))
    assert out.shape == img.shape
    again = pp.jitter(img, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    for o in out:
        ys, xs = torch.nonzero(o[0] > 0, as_tuple=True)
        assert len(ys) == 4 and 2 <= int(ys.min()) <= 4 and 2 <= int(xs.min()) <= 4
    # all nine offsets occur in a batch of 64
    assert len({(int(torch.nonzero(o[0] > 0)[0, 0]), int(torch.nonzero(o[0] > 0)[0, 1])) for o in out}) == 9


def test_base_model_puts_digits_in_the_prompted_order(backbone, reward: DigitPairReward) -> None:
    """The shipped base model learnt the order: the swapped pair is rarer than the right one (it fails by placement)."""
    from opgrpo_bench.sampling import sample_ode

    prompts = dp.make_pair_prompts(dp.EVAL_TEMPLATE)
    noise = torch.randn((len(prompts), *backbone.latent_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = backbone.decode(sample_ode(backbone, backbone.encode([p.text for p in prompts]), noise,
                                            backbone.sigmas(20), 1.0))
    right = reward(images, [p.text for p in prompts], [p.meta for p in prompts]).scores.mean()
    swapped = reward(images, [""] * len(prompts),
                     [{"left": p.meta["right"], "right": p.meta["left"]} for p in prompts]).scores.mean()
    assert 0.0 < right < 0.3 and swapped < right
