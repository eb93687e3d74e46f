"""Where the project keeps files: atomic writes, its own cache folder, and the Hugging Face cache (read only).

- :func:`atomic_write` (and :func:`atomic_folder` for a whole folder): every file the project writes that a
  crash must not leave half written (checkpoints, results files, leaderboard pages, exported adapters,
  cached tiny pipelines) goes through it.
- :func:`cache_root`: the one cache folder (tiny pipelines built in code, the reward server's key file).
- :func:`hf_hub_cache`, :func:`looks_like_path`, :func:`cached_snapshot`: offline lookups of weights in the
  local Hugging Face cache, shared by the backbones' and the rewards' weight resolution. Nothing here
  touches the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from opgrpo_bench.errors import MissingWeightsError

CACHE_ENV = "OPGRPO_CACHE_DIR"
"""Environment variable that overrides :func:`cache_root`."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it over ``path``.

    A reader sees the old file or the whole new one, never a part. The temporary name is hidden and
    carries the process id, so concurrent writers never share one; on any error (``write`` may raise to
    refuse its own output) it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically (:func:`atomic_write`)."""
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_texts(texts: dict[Path, str]) -> None:
    """Write several files as one: every text goes to a temporary sibling and is fsynced first, and only when
    all are complete are they renamed over their paths, one right after the other. A failure or a kill while
    writing leaves every old file as it was (the temporaries are removed, or left hidden); only a kill inside
    the few microseconds of the renames could leave old and new files side by side."""
    temps: dict[Path, Path] = {}
    try:
        for path, text in texts.items():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps[path] = tmp
            with tmp.open("w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise


def atomic_folder(folder: str | os.PathLike[str], build: Callable[[Path], Any], replace: bool = True) -> Path:
    """Call ``build(tmp)`` on a new temporary sibling folder, then rename it to ``folder``; returns ``folder``.

    A reader sees no folder, the old one or the whole new one. ``replace``: an existing ``folder`` is removed
    just before the rename; otherwise an existing non-empty ``folder`` (another process renamed its copy
    first) is kept and this one discarded. The temporary folder never outlives the call.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        build(tmp)
        if replace and folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:  # the target exists and is not empty: another process won the race
            if replace or not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cache_root() -> Path:
    """``$OPGRPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/opgrpo-bench``, else ``~/.cache/opgrpo-bench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "opgrpo-bench"


def hf_hub_cache() -> str:
    """The local Hugging Face hub cache folder (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ...), as messages name it."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub absent or broken
        return "~/.cache/huggingface/hub"


def looks_like_path(value: str) -> bool:
    """Repo ids look like ``owner/name``; anything else is a local path."""
    return value.startswith(("/", ".", "~")) or value.count("/") != 1 or "\\" in value


def cached_snapshot(repo_id: str, what: str, otherwise: str,
                    error: type[MissingWeightsError] = MissingWeightsError) -> Path:
    """The cached snapshot of ``repo_id`` (local files only: fails at once, no network, no retries).

    Raises:
        MissingWeightsError: (``error``, a subclass its callers catch) "<what>: '<repo_id>' is not in the
            Hugging Face cache (...); run `hf download <repo_id>` ... or <otherwise>".
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, ...: all mean "not here"
        raise error(
            f"{what}: '{repo_id}' is not in the Hugging Face cache ({hf_hub_cache()}); run `hf download {repo_id}` "
            f"where the hub is reachable and copy the cache here, or {otherwise}"
        ) from None
