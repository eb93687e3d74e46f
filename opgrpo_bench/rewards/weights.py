"""Offline lookup of reward-model weights: a local path, an environment variable, or the Hugging Face cache.

Nothing here touches the network: Hugging Face lookups use ``local_files_only=True``, so a missing file
fails at once (no retries, no hang) with a :class:`MissingWeightsError` whose message is one line naming
what is missing and the ways to provide it.

Resolution order for every reward: the ``path=`` keyword argument, then the reward's environment variable
(e.g. ``OPGRPO_PICKSCORE_PATH``), then the default Hugging Face repo id looked up in the local cache
(``HF_HOME`` / ``HF_HUB_CACHE``). A value that is an existing file or folder is used as is; any other
value is treated as a repo id and looked up in the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from opgrpo_bench.rewards.base import MissingDependencyError, MissingWeightsError
from opgrpo_bench.storage import cached_snapshot, hf_hub_cache, looks_like_path


def resolve_source(
    path: str | os.PathLike[str] | None, env: str, default: str
) -> tuple[str, str]:
    """The value to resolve and where it came from (``path=``, the env variable, or the default)."""
    if path is not None:
        return str(path), "path="
    if os.environ.get(env):
        return os.environ[env], f"${env}"
    return default, "default"


def resolve_dir(
    path: str | os.PathLike[str] | None,
    *,
    env: str,
    default_repo: str,
    what: str,
    required: tuple[str, ...] = ("config.json",),
) -> Path:
    """A local folder with a model (e.g. a ``save_pretrained`` folder or a cached HF snapshot).

    Args:
        path: explicit folder or repo id (wins over ``env`` and ``default_repo``).
        env: environment variable that may hold a folder or repo id.
        default_repo: Hugging Face repo id looked up in the local cache.
        what: human name of the files for the error message (e.g. "PickScore model").
        required: files that must exist in the folder.
    """
    value, origin = resolve_source(path, env, default_repo)
    local = Path(value).expanduser()
    if local.is_dir():
        folder = local
    elif looks_like_path(value):
        raise MissingWeightsError(
            f"{what}: folder '{value}' (from {origin}) does not exist; pass path=DIR or set {env}=DIR "
            f"to a folder holding {', '.join(required)}"
        )
    else:
        folder = cached_snapshot(value, what, f"pass path=DIR / set {env}=DIR", error=MissingWeightsError)
    missing = [f for f in required if not (folder / f).exists()]
    if missing:
        raise MissingWeightsError(
            f"{what}: '{folder}' lacks {', '.join(missing)}; pass path=DIR or set {env}=DIR to a complete copy "
            f"of {default_repo}"
        )
    return folder


def resolve_file(
    path: str | os.PathLike[str] | None,
    *,
    env: str,
    default_repo: str,
    filename: str,
    what: str,
) -> Path:
    """A single weights file: an explicit file, a folder holding ``filename``, or ``filename`` in a cached repo."""
    value, origin = resolve_source(path, env, default_repo)
    local = Path(value).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        if (local / filename).is_file():
            return local / filename
        raise MissingWeightsError(f"{what}: '{local}' (from {origin}) has no {filename}; pass path=FILE or set {env}=FILE")
    if looks_like_path(value):
        raise MissingWeightsError(
            f"{what}: '{value}' (from {origin}) does not exist; pass path=FILE or set {env}=FILE to {filename} "
            f"(from the Hugging Face repo {default_repo})"
        )
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("huggingface_hub is needed to look up cached weights") from None
    found = try_to_load_from_cache(value, filename)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    raise MissingWeightsError(
        f"{what}: {filename} of '{value}' is not in the Hugging Face cache ({hf_hub_cache()}); "
        f"run `hf download {value} {filename}` where the hub is reachable and copy the cache here, "
        f"or pass path=FILE / set {env}=FILE"
    )
