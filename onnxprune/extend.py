"""Extension points: a registry that refuses duplicates, and plugins that register into them.

Every extension point (criteria: ``onnxprune.scoring.criteria``; recovery methods:
``onnxprune.recovery.methods``; weighted ops: ``onnxprune.analysis.weighted_ops``) is a
``Registry``: one entry per name, added in one place, a second entry under a taken name
refused. The built-in entries register themselves when their modules are imported; a
registry imports them (and the installed plugins) the first time it is read.

A plugin is a Python module whose import registers entries (``register_criterion``,
``register_recovery_method``). It is loaded by name (``onnxprune --plugin my_module prune
...``, or ``load_plugin``), or, once installed, from the ``onnxprune.plugins`` entry-point
group (``[project.entry-points."onnxprune.plugins"] my_plugin = "my_module"``), which every
registry loads on first use.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from onnxprune.errors import UsageError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onnxprune.plugins"

T = TypeVar("T")


class PluginError(UsageError):
    """A plugin module cannot be imported, or fails while registering its entries."""


class DuplicateRegistrationError(PluginError, ValueError):
    """A name registered twice in one registry (the first entry is kept)."""


class Registry(Generic[T]):
    """Entries by name, in registration order; a name registered twice is refused.

    ``what`` names an entry in messages ("criterion"); ``builtins`` are the modules whose
    import registers the built-in entries (imported, with the installed plugins, on first read).
    """

    def __init__(self, what: str, builtins: Sequence[str] = ()) -> None:
        self.what = what
        self._builtins = tuple(builtins)
        self._entries: dict[str, T] = {}
        self._builtins_loaded = not self._builtins

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a DuplicateRegistrationError if the name is taken (the
        built-in entries are loaded first, so a plugin cannot take a built-in's name)."""
        self._load_builtins()
        if name in self._entries:
            raise DuplicateRegistrationError(f"{self.what} '{name}' registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T | None:
        self._load()
        return self._entries.get(name)

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def values(self, *, plugins: bool = True) -> tuple[T, ...]:
        """The entries; ``plugins=False``: without loading the installed plugins first (for help
        texts built at import time: entries already registered are included)."""
        self._load() if plugins else self._load_builtins()
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _load(self) -> None:
        self._load_builtins()
        load_entry_points()

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtins:
                importlib.import_module(module)


_plugins_loaded = False


def load_plugin(module: str) -> None:
    """Import the plugin ``module`` (a dotted module name), which registers its entries."""
    try:
        importlib.import_module(module)
    except DuplicateRegistrationError as exc:
        raise PluginError(f"plugin '{module}': {exc}") from None
    except ImportError as exc:
        raise PluginError(f"cannot load plugin '{module}': {exc}") from exc
    except Exception as exc:  # the plugin's own code failed while registering: name it
        raise PluginError(f"plugin '{module}' failed while loading: {type(exc).__name__}: {exc}") from exc


def load_entry_points() -> None:
    """Load every installed plugin of the ``onnxprune.plugins`` entry-point group (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        log.debug("loading plugin %s (%s)", ep.name, ep.value)
        try:
            ep.load()
        except DuplicateRegistrationError as exc:
            raise PluginError(f"plugin '{ep.name}' ({ep.value}): {exc}") from None
        except ImportError as exc:
            raise PluginError(f"cannot load plugin '{ep.name}' ({ep.value}): {exc}") from exc
        except Exception as exc:  # the plugin's own code failed while registering: name it
            raise PluginError(f"plugin '{ep.name}' ({ep.value}) failed while loading: "
                              f"{type(exc).__name__}: {exc}") from exc
