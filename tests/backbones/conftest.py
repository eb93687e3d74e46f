"""Backbone test fixtures: a tiny SD3, FLUX and Wan folder per session, built in code, loaded offline."""

from __future__ import annotations

import os

# Read by huggingface_hub / transformers / diffusers at import time: nothing may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$OPGRPO_CACHE_DIR`` for the session, so the tiny task builds into a temporary folder, not ~/.cache."""
    path = tmp_path_factory.mktemp("opgrpo-cache")
    old = os.environ.get("OPGRPO_CACHE_DIR")
    os.environ["OPGRPO_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("OPGRPO_CACHE_DIR", None)
    else:
        os.environ["OPGRPO_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_folder(cache_dir: Path) -> Path:
    """The tiny-sd3-jpeg-v1 pipeline folder (the same one the task loads)."""
    from opgrpo_bench.backbones.tiny import TinySD3Config, tiny_sd3_folder
    from opgrpo_bench.backbones.models import TINY_RESOLUTION, TINY_SEED

    return tiny_sd3_folder(TinySD3Config(resolution=TINY_RESOLUTION), seed=TINY_SEED)


@pytest.fixture()
def backbone(tiny_folder: Path):
    """A fresh backbone loaded from the tiny folder (no LoRA yet); one torch thread (tiny ops: threads cost more)."""
    from opgrpo_bench.backbones.sd3 import SD3Backbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield SD3Backbone.from_pretrained(tiny_folder, resolution=32, max_sequence_length=16)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_flux_folder(cache_dir: Path) -> Path:
    """The tiny-flux-jpeg-v1 pipeline folder (the same one the task loads)."""
    from opgrpo_bench.backbones.tiny_flux import TinyFluxConfig, tiny_flux_folder as folder
    from opgrpo_bench.backbones.models import TINY_RESOLUTION, TINY_SEED

    return folder(TinyFluxConfig(resolution=TINY_RESOLUTION), seed=TINY_SEED)


@pytest.fixture()
def flux(tiny_flux_folder: Path):
    """A fresh FLUX backbone loaded from the tiny folder (no LoRA yet), 32 px, one torch thread."""
    from opgrpo_bench.backbones.flux import FluxBackbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield FluxBackbone.from_pretrained(tiny_flux_folder, resolution=32, max_sequence_length=16)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_wan_folder(cache_dir: Path) -> Path:
    """The tiny-wan-video-v1 pipeline folder (the same one the task loads)."""
    from opgrpo_bench.backbones.tiny_wan import TinyWanConfig, tiny_wan_folder as folder
    from opgrpo_bench.backbones.models import TINY_NUM_FRAMES, TINY_RESOLUTION, TINY_SEED

    return folder(TinyWanConfig(height=TINY_RESOLUTION, width=TINY_RESOLUTION, num_frames=TINY_NUM_FRAMES), seed=TINY_SEED)


@pytest.fixture()
def wan(tiny_wan_folder: Path):
    """A fresh Wan backbone loaded from the tiny folder (no LoRA yet), 9 frames of 32 px, one torch thread."""
    from opgrpo_bench.backbones.wan import WanBackbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield WanBackbone.from_pretrained(tiny_wan_folder, height=32, width=32, num_frames=9, max_sequence_length=16)
    torch.set_num_threads(threads)


@pytest.fixture()
def no_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``no_weights(module, env, tasks)``: neither Flow-GRPO's prompt files nor a family's weights (an empty
    HF cache, ``env`` and ``$OPGRPO_PROMPTS_DIR`` unset) for the lazily built specs ``tasks`` (task id ->
    attribute of ``opgrpo_bench.tasks.<module>``).

    Specs are read once per process (the registry keeps a loaded target, the module a cache): the lazy
    targets are put back and the cache emptied, so that each test sees its own environment."""
    import importlib

    from huggingface_hub import constants

    from opgrpo_bench.registry import TASKS
    from opgrpo_bench.tasks.external import PROMPTS_ENV

    cleared = []

    def apply(module: str, env: str, tasks: dict[str, str]) -> None:
        mod = importlib.import_module(f"opgrpo_bench.tasks.{module}")
        monkeypatch.delenv(PROMPTS_ENV, raising=False)
        monkeypatch.delenv(env, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
        for task_id, attr in tasks.items():
            monkeypatch.setattr(TASKS.entry(task_id), "target", f"opgrpo_bench.tasks.{module}:{attr}")
        mod._spec.cache_clear()
        cleared.append(mod)

    yield apply
    for mod in cleared:
        mod._spec.cache_clear()
