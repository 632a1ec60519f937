"""One registry per process, replaced whole on reload: every reader sees one consistent registry.

The gateway, the worker's runtime, its pipelines and its batcher all read ``holder.current``; a reload (an
admin's ``POST /v1/admin/registry/reload``, or a worker noticing the version bump) swaps in a new registry
at once. A job takes ``current`` once and uses that snapshot to its end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sdserve.registry.registry import Registry


class RegistryHolder:
    """The process's registry, and how to load it again."""

    def __init__(self, load: Callable[[], Registry]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._current = load()
        self.version = 0

    @property
    def current(self) -> Registry:
        return self._current

    def reload(self) -> Registry:
        """Load the registry again and make it current (a bad file leaves the current one in place)."""
        registry = self._load()
        with self._lock:
            self._current = registry
            self.version += 1
        return registry
