"""One generic registry for algorithms, rewards, tasks and backbones.

Modelled on lm-evaluation-harness's registry: entries map a canonical name (plus aliases) to a
target that is either an object or a lazy ``"module.path:attr"`` string, imported only on first use so
that ``opgrpo-bench list`` never imports torch-heavy code. Third-party packages add entries through
entry points in the groups ``opgrpo_bench.algorithms``, ``opgrpo_bench.rewards``,
``opgrpo_bench.tasks`` and ``opgrpo_bench.backbones`` (value ``"pkg.module:attr"``).

Unknown names raise :class:`UnknownNameError` whose message carries "did you mean" suggestions;
the CLI prints that one line and exits with code 2.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; ``str()`` is a one-line, user-facing message."""

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str]):
        self.kind, self.name, self.suggestions, self.known = kind, name, suggestions, known
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown {kind} '{name}'.{hint} Known: {', '.join(known)}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass
class Entry:
    """One registered item: canonical name, target (object or ``"module:attr"``) and metadata."""

    name: str
    target: Any
    aliases: tuple[str, ...] = ()
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        if isinstance(self.target, str):
            module_name, _, attr = self.target.partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split(".") if attr else []:
                obj = getattr(obj, part)
            self.target = obj
        return self.target


class Registry(Generic[T]):
    """Name -> object map with aliases, lazy targets, entry-point plugins and helpful errors."""

    def __init__(self, kind: str, entry_point_group: str | None = None, builtins: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        # module whose import registers the built-in entries (lazily, so no heavy imports)
        self.builtins = builtins
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str,
        target: Any = None,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        description: str = "",
        overwrite: bool = False,
        **meta: Any,
    ) -> Any:
        """Register ``target`` under ``name``; usable as a decorator when ``target`` is omitted."""
        if target is None:
            def decorator(obj: Any) -> Any:
                self.register(name, obj, aliases=aliases, description=description,
                              overwrite=overwrite, **meta)
                return obj
            return decorator
        key = self._norm(name)
        if not overwrite and (key in self._entries or key in self._aliases):
            raise ValueError(f"{self.kind} '{name}' is already registered")
        if not description and not isinstance(target, str):
            description = (getattr(target, "__doc__", None) or "").strip().splitlines()[0:1]
            description = description[0] if description else ""
        self._entries[key] = Entry(key, target, tuple(self._norm(a) for a in aliases), description, meta)
        for alias in aliases:
            self._aliases[self._norm(alias)] = key
        return target

    # -- lookup -------------------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        self._load_plugins()
        key = self._norm(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            known = self.names()
            suggestions = difflib.get_close_matches(key, known + sorted(self._aliases), n=3, cutoff=0.5)
            suggestions = list(dict.fromkeys(self._aliases.get(s, s) for s in suggestions))
            raise UnknownNameError(self.kind, name, suggestions, known)
        return self._entries[key]

    def get(self, name: str) -> T:
        """The registered object (imported on first use)."""
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
        except UnknownNameError:
            return False
        return True

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        for name in self.names():
            yield self._entries[name]

    # -- internals ----------------------------------------------------------------------------
    @staticmethod
    def _norm(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if self.builtins:
            importlib.import_module(self.builtins)
        if not self.entry_point_group:
            return
        for ep in metadata.entry_points(group=self.entry_point_group):
            if self._norm(ep.name) not in self._entries:
                self.register(ep.name, ep.value, description=f"plugin from {ep.value}")


ALGORITHMS: Registry[Any] = Registry("algorithm", "opgrpo_bench.algorithms", "opgrpo_bench.algorithms")
REWARDS: Registry[Any] = Registry("reward", "opgrpo_bench.rewards", "opgrpo_bench.rewards")
TASKS: Registry[Any] = Registry("task", "opgrpo_bench.tasks", "opgrpo_bench.tasks")
BACKBONES: Registry[Any] = Registry("backbone", "opgrpo_bench.backbones", "opgrpo_bench.backbones")

REGISTRIES: dict[str, Registry[Any]] = {
    "algorithms": ALGORITHMS,
    "rewards": REWARDS,
    "tasks": TASKS,
    "backbones": BACKBONES,
}
