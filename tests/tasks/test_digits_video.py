"""digits-video-v1: prompt sets, the ``digit-video`` reward on hand-made videos, the shipped Wan base model and
its recorded base score, the deterministic pretraining, and 2-step Flow-GRPO / OP-GRPO runs."""

from __future__ import annotations

import json

import pytest
import torch

from opgrpo_bench.registry import ALGORITHMS, BACKBONES, REWARDS, TASKS
from opgrpo_bench.rewards.digits import DigitVideoReward, prompted_digit, prompted_direction
from opgrpo_bench.backbones import digits as digits_models
from opgrpo_bench.backbones.digits import MAX_TOKENS
from opgrpo_bench.pretraining import digits_video as pv
from opgrpo_bench.pretraining.common import load_split
from opgrpo_bench.tasks import digits_video as dvid


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="module")
def reward() -> DigitVideoReward:
    return REWARDS.get("digit-video")(speed=dvid.SPEED)


@pytest.fixture(scope="module")
def backbone():
    return digits_models.load_video_backbone()


@pytest.fixture(scope="module")
def test_digits(reward: DigitVideoReward) -> dict[int, torch.Tensor]:
    """One held-out (test-split) image per digit that the classifier reads correctly, [1, 8, 8] in [0, 1]."""
    _, _, x_test, y_test = load_split()
    with torch.no_grad():
        pred = reward.model(x_test).argmax(-1)
    return {d: x_test[int(torch.nonzero((y_test == d) & (pred == d)).flatten()[0])] for d in range(10)}


def video(digit_image: torch.Tensor, direction: int) -> torch.Tensor:
    """[F, 1, 8, W] video (the reward's layout) of one real digit moving right (+1) or left (-1)."""
    return pv.moving_videos(digit_image[None], torch.tensor([direction]))[0].permute(1, 0, 2, 3)


# -- prompts -----------------------------------------------------------------------------------------
def test_spec_registered_with_disjoint_prompt_sets() -> None:
    spec = TASKS.get("digits-video-v1")
    assert spec is TASKS.get("digits-video") and spec.reward == spec.gold_reward == "digit-video"
    assert spec.gold_reward_args["classifier"] == "gold" and spec.backbone in BACKBONES
    train, evals = spec.train_prompts, spec.eval_prompts
    assert len(train) == 4 * 10 * 2 and len(evals) == 2 * 10 * 2
    assert not {p.text for p in train} & {p.text for p in evals}
    assert len({p.text for p in train + evals}) == len(train) + len(evals)
    assert {"a handwritten 7 moving left", "a handwritten 7 moving right"} <= {p.text for p in train}
    for p in train + evals:  # the text says what the metadata says
        assert prompted_digit(p.text) == p.meta["digit"] and prompted_direction(p.text) == p.meta["direction"]
    for prompts in (train, evals):  # every digit in both directions
        assert {(p.meta["digit"], p.meta["direction"]) for p in prompts} == {
            (d, s) for d in range(10) for s in ("left", "right")}
    assert 0 < spec.target < 1 and spec.budget_steps > 0 and spec.eval_metric is None


def test_prompts_tokenize_without_unknown_words(backbone) -> None:
    tok = backbone.prompt_encoder.tokenizer
    spec = TASKS.get("digits-video-v1")
    for p in spec.train_prompts + spec.eval_prompts:
        ids = tok(p.text).input_ids
        assert tok.unk_token_id not in ids and len(ids) <= MAX_TOKENS, p.text


@pytest.mark.parametrize("text, meta, expected", [
    ("a handwritten 7 moving left", None, "left"), ("the digit 3 going to the right", None, "right"),
    ("a 7", None, None), ("a 7 moving left", {"direction": "right"}, "right"), ("x", {"direction": "up"}, None),
])
def test_direction_parsing(text: str, meta: dict | None, expected: str | None) -> None:
    assert prompted_direction(text, meta) == expected


# -- the reward --------------------------------------------------------------------------------------
def test_moving_videos_follow_the_documented_paths() -> None:
    image = torch.rand(1, 1, 8, 8)
    right = pv.moving_videos(image, torch.tensor([1]))[0, 0]  # [F, 8, W]
    left = pv.moving_videos(image, torch.tensor([-1]))[0, 0]
    assert right.shape == (dvid.N_FRAMES, 8, dvid.FRAME_WIDTH)
    for f in range(dvid.N_FRAMES):  # the digit at its offset, background (0) everywhere else
        for frames, x in ((right, f * dvid.SPEED), (left, dvid.FRAME_WIDTH - 8 - f * dvid.SPEED)):
            rest = frames[f].clone()
            assert torch.equal(rest[:, x:x + 8], image[0, 0])
            rest[:, x:x + 8] = 0
            assert not rest.any()
    with pytest.raises(ValueError):
        pv.moving_videos(image, torch.tensor([1]), width=10)


def test_reward_on_real_digits_in_motion(reward: DigitVideoReward, test_digits) -> None:
    """Right digit moving the right way: high; wrong digit: low; wrong way, static, blank: 0."""
    rows, prompts = [], []
    for d in range(10):
        for direction, word in ((1, "right"), (-1, "left")):
            rows.append(video(test_digits[d], direction))
            prompts.append(f"a handwritten {d} moving {word}")
    out = reward(torch.stack(rows), prompts)
    assert bool((out.scores > 0.8).all()), out.scores
    assert torch.allclose(out.components["motion"], torch.ones(20))  # rigid motion at full speed
    assert torch.allclose(out.scores, out.components["p_digit"])  # so the score is the frame-wise mean
    assert torch.equal(out.components["success"], torch.ones(20))
    # the same videos prompted with the other direction, another digit, or shown static / blank
    wrong_way = reward(torch.stack(rows), [p.replace("right", "LEFT").replace("left", "right").replace("LEFT", "left")
                                           for p in prompts])
    assert torch.equal(wrong_way.scores, torch.zeros(20)) and torch.equal(wrong_way.components["success"],
                                                                          torch.zeros(20))
    wrong_digit = reward(torch.stack(rows), [p.replace(f" {d} ", f" {(d + 5) % 10} ")
                                             for p, d in zip(prompts, [d for d in range(10) for _ in range(2)])])
    assert float(wrong_digit.scores.max()) < 0.2 and float(wrong_digit.scores.mean()) < 0.05
    static = torch.stack([r[:1].expand_as(r) for r in rows])
    assert torch.equal(reward(static, prompts).scores, torch.zeros(20))
    blank = reward(torch.zeros(1, dvid.N_FRAMES, 1, 8, dvid.FRAME_WIDTH), prompts[:1])
    assert blank.scores[0] == 0 and blank.components["p_digit"][0] == 0


class _Uniform(torch.nn.Module):
    """A stand-in classifier with known outputs: p = 0.1 for every digit in every window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10)


def _bars(columns: list[int | None]) -> torch.Tensor:
    """[F, 1, 8, W]: frame f has one lit column at ``columns[f]`` (None: a blank frame)."""
    out = torch.zeros(len(columns), 1, 8, dvid.FRAME_WIDTH)
    for f, c in enumerate(columns):
        if c is not None:
            out[f, 0, :, c] = 1.0
    return out


def test_reward_aggregation_by_hand(test_digits) -> None:
    """score = mean_f p_f * mean_f clamp(s (c_{f+1} - c_f) / speed, 0, 1), with hand-computed values."""
    reward = DigitVideoReward(speed=2.0)
    reward.model = _Uniform()
    videos = torch.stack([_bars([2, 4, 5, 5]), _bars([2, 4, 5, 5]), _bars([5, 5, 4, 2]), _bars([2, 8, None, 13]),
                          _bars([3, 2, 5, 9])])
    prompts = ["a 7 moving right", "a 7 moving left", "a 7 moving left", "a 7 moving right", "a 0 moving right"]
    out = reward(videos, prompts)
    # steps (c_{f+1} - c_f) / 2, signed by the direction, clamped to [0, 1]:
    # [1, 0.5, 0] | [0, 0, 0] | [0, 0.5, 1] | [1, 0 (blank), 0 (blank)] | [0, 1, 1]
    motion = torch.tensor([1.5 / 3, 0.0, 1.5 / 3, 1 / 3, 2 / 3])
    p_digit = torch.tensor([0.1, 0.1, 0.1, 0.075, 0.1])  # a blank frame reads 0
    assert torch.allclose(out.components["motion"], motion) and torch.allclose(out.components["p_digit"], p_digit)
    assert torch.allclose(out.scores, p_digit * motion)
    assert torch.equal(out.components["success"], torch.zeros(5))  # argmax of uniform logits is 0, not 7
    # the real classifier on a real digit moving right: p_f read at x_f = c_f - 3.5, interpolated
    real = DigitVideoReward(speed=2.0)
    image = test_digits[7][0]  # [8, 8]
    cols = image.sum(0)
    c_digit = float((cols * torch.arange(8.0)).sum() / cols.sum())
    clip = video(test_digits[7], 1)  # [F, 1, 8, W]
    p_frames = []
    for f in range(dvid.N_FRAMES):
        x = min(max(2 * f + c_digit - 3.5, 0.0), dvid.FRAME_WIDTH - 8.0)
        left, a = int(x), x - int(x)
        with torch.no_grad():
            p = [float(real.model(clip[f, :, :, k:k + 8]).softmax(-1)[0, 7]) if k <= dvid.FRAME_WIDTH - 8 else 0.0
                 for k in (left, left + 1)]
        p_frames.append((1 - a) * p[0] + a * p[1])
    out = real(clip[None], ["a 7 moving right"])
    assert float(out.components["p_digit"][0]) == pytest.approx(sum(p_frames) / len(p_frames), abs=1e-5)
    assert float(out.components["motion"][0]) == pytest.approx(1.0, abs=1e-5)
    assert float(out.scores[0]) == pytest.approx(sum(p_frames) / len(p_frames), abs=1e-5)


def test_reward_nan_rows_shapes_and_batch_invariance(reward: DigitVideoReward, test_digits) -> None:
    rows = torch.stack([video(test_digits[d], 1) for d in (1, 2, 3)])
    rows[2, 1, 0, 0, 0] = float("nan")
    out = reward(rows, ["a 1 moving right", "a handwritten digit", "a 3 moving right"])
    assert out.scores[0] > 0.8 and torch.isnan(out.scores[1:]).all()
    assert out.info["nan_reason"][0] is None and all(out.info["nan_reason"][1:])
    single = reward(rows[:1], ["a 1 moving right"])
    assert torch.equal(single.scores, out.scores[:1])
    for shape in ((1, 4, 1, 8, 7), (1, 4, 3, 8, 14), (1, 1, 1, 8, 14), (1, 1, 8, 14)):
        with pytest.raises(ValueError):
            reward(torch.rand(*shape), ["a 1 moving right"])
    with pytest.raises(ValueError):
        DigitVideoReward(speed=0)


# -- the base model ----------------------------------------------------------------------------------
def test_assets_load_and_sample(backbone, reward: DigitVideoReward) -> None:
    from opgrpo_bench.sampling import sample_ode

    assert backbone.latent_shape == dvid.VIDEO_SHAPE and backbone.num_frames == dvid.N_FRAMES
    assert type(backbone.transformer).__name__ == "WanTransformer3DModel" and backbone.vae is None
    assert backbone.transformer.config.in_channels == 1 + backbone.condition.shape[0]
    meta = json.loads((digits_models.VIDEO_ASSETS / "base_model.json").read_text())
    assert meta["pretrain_steps"] == pv.PRETRAIN_STEPS and meta["frame_steps"] == pv.FRAME_STEPS
    assert meta["video_shape"] == list(dvid.VIDEO_SHAPE)
    size = sum(f.stat().st_size for f in digits_models.VIDEO_ASSETS.rglob("*") if f.is_file())
    assert size < 1_000_000, size
    prompts = ["a handwritten 7 moving left", "the digit 2 moving right"]
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        videos = backbone.decode(sample_ode(backbone, backbone.encode(prompts), noise, backbone.sigmas(4), 1.0))
    assert videos.shape == (2, dvid.N_FRAMES, 1, 8, dvid.FRAME_WIDTH)
    assert bool(((videos >= 0) & (videos <= 1)).all())
    scores = reward(videos, prompts).scores
    assert bool(((scores >= 0) & (scores <= 1)).all())


def test_base_score_is_the_recorded_one_and_below_the_target(backbone) -> None:
    """The trainer's step-0 evaluation of the shipped base model (ODE samples of the 40 eval prompts x 2 fixed
    noises, 20 steps): the recorded base score, clearly below the target."""
    from opgrpo_bench.evaluation import Evaluator

    spec = TASKS.get("digits-video-v1")
    reward = REWARDS.get(spec.reward)(**spec.reward_args)
    gold = REWARDS.get(spec.gold_reward)(**spec.gold_reward_args)
    metrics = Evaluator(spec, backbone, reward, gold, num_steps=20, guidance=1.0)()
    assert metrics["score"] == pytest.approx(dvid.BASE_SCORE, abs=2e-3), metrics
    assert metrics["score"] < spec.target - 0.05
    assert 0.5 < metrics["eval/motion"] < 0.95 and metrics["eval/p_digit"] < 0.6  # mediocre at both
    assert metrics["gold"] < metrics["score"]


# -- the build ---------------------------------------------------------------------------------------
@pytest.mark.train
def test_pretraining_is_deterministic_and_trains_both_phases() -> None:
    def run() -> dict[str, torch.Tensor]:
        transformer, text_encoder, _, _ = pv.pretrain_video_model(steps=3, frame_steps=1, batch_size=4)
        return {**{f"t.{k}": v for k, v in transformer.state_dict().items()},
                **{f"e.{k}": v for k, v in text_encoder.state_dict().items()}}

    a, b = run(), run()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = pv.build_video_transformer().state_dict()
    assert any(not torch.equal(fresh[k], a[f"t.{k}"]) for k in fresh)


@pytest.mark.train
def test_build_script_writes_a_loadable_folder(tmp_path) -> None:
    meta = pv.build_video_assets(tmp_path, steps=2, frame_steps=1, batch_size=2)
    assert meta["pretrain_steps"] == 2 and (tmp_path / "base_model.json").exists()
    bb = digits_models.load_video_backbone(tmp_path)
    assert bb.latent_shape == dvid.VIDEO_SHAPE


# -- RL ----------------------------------------------------------------------------------------------
@pytest.mark.train
@pytest.mark.parametrize("algorithm", ["flow-grpo", "op-grpo"])
def test_two_step_run_changes_the_lora_adapter(tmp_path, algorithm: str) -> None:
    from opgrpo_bench.results import read_records
    from opgrpo_bench.trainer import Trainer
    from opgrpo_bench.validation import build_settings

    spec = TASKS.get("digits-video-v1")
    sets = {"prompts_per_iter": "2", "group_size": "4", "num_steps": "4", "eval_num_steps": "2", "eval_every": "2"}
    train_cfg, algo = build_settings(spec, ALGORITHMS.get(algorithm), algorithm, 0, 2, sets)
    trainer = Trainer(spec, algo, train_cfg, tmp_path / "run", algorithm_name=algorithm)
    named = dict(trainer.backbone.transformer.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    end = trainer.run("digits-video-v1")
    lora = [n for n in named if "lora_" in n]
    assert lora and any(not torch.equal(before[n], named[n]) for n in lora)
    assert all(torch.equal(before[n], named[n]) for n in named if "lora_" not in n)
    assert end["steps"] == 2
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(0 <= r["score"] <= 1 and "gold" in r and "eval/motion" in r for r in evals)
