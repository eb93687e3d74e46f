"""Offline fixtures for the reward tests: stand-in model folders are built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import reward_standins as standins  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _empty_hf_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the Hugging Face cache at an empty folder so "weights absent" is the same everywhere."""
    cache = tmp_path_factory.mktemp("hf-cache")
    old = {k: os.environ.get(k) for k in ("HF_HUB_CACHE",)}
    os.environ["HF_HUB_CACHE"] = str(cache)
    try:
        from huggingface_hub import constants

        saved = constants.HF_HUB_CACHE
        standins.REAL_HF_CACHE = saved  # the `weights` tests look there
        constants.HF_HUB_CACHE = str(cache)
    except ImportError:  # pragma: no cover
        saved = None
    yield cache
    if saved is not None:
        constants.HF_HUB_CACHE = saved
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _reward_secret():
    """A session secret for the reward server, so no test writes a key file into the real cache folder."""
    import secrets

    old = os.environ.get("OPGRPO_REWARD_SECRET")
    os.environ["OPGRPO_REWARD_SECRET"] = "test-" + secrets.token_hex(16)
    yield os.environ["OPGRPO_REWARD_SECRET"]
    if old is None:
        os.environ.pop("OPGRPO_REWARD_SECRET", None)
    else:
        os.environ["OPGRPO_REWARD_SECRET"] = old


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("standins")


@pytest.fixture(scope="session")
def clip_dir(standin_dir: Path) -> Path:
    return standins.save_clip(standin_dir / "clip")


@pytest.fixture(scope="session")
def pickscore_dirs(standin_dir: Path) -> tuple[Path, Path]:
    """(model folder without tokenizer, processor folder) as PickScore_v1 + the LAION processor repo ship."""
    model = standins.save_clip(standin_dir / "pickscore", with_tokenizer=False, seed=1)
    processor = standins.save_clip(standin_dir / "pickscore-processor", seed=2)
    return model, processor


@pytest.fixture(scope="session")
def aesthetic_mlp(standin_dir: Path) -> Path:
    return standins.save_aesthetic_mlp(standin_dir / "sac+logos+ava1-l14-linearMSE.pth")


@pytest.fixture(scope="session")
def hpsv2_files(standin_dir: Path) -> tuple[Path, Path]:
    return standins.save_hpsv2(standin_dir / "hpsv2")


@pytest.fixture(scope="session")
def image_reward_files(standin_dir: Path) -> tuple[Path, Path]:
    return standins.save_image_reward(standin_dir / "image-reward")


@pytest.fixture(scope="session")
def mask2former_dir(standin_dir: Path) -> Path:
    return standins.save_mask2former(standin_dir / "mask2former")
