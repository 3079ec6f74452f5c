"""`store_from_url`: one address names any store (files, memory, PostgreSQL)."""

from __future__ import annotations

import os
from typing import Any

from ._file_store import FileCheckpointStore
from ._memory_store import MemoryCheckpointStore
from ._store import CheckpointStore

__all__ = ["store_from_url"]


def store_from_url(url: str | os.PathLike[str], **options: Any) -> CheckpointStore:
    """Return the store an address names.

    - ``postgresql://user:password@host:port/database[?schema=NAME]`` (or ``postgres://``):
      a `PostgresCheckpointStore` (needs the ``postgres`` extra); *options* go to it
      (``lease_ttl``, ``max_connections``...);
    - ``memory:``: a new `MemoryCheckpointStore`;
    - ``file:PATH`` or a plain path: a `FileCheckpointStore` of that folder.

    Example:
        >>> store = store_from_url(".vibe_checkpoints")

    """
    text = os.fspath(url)
    scheme = text.partition(":")[0].lower() if ":" in text else ""
    if scheme in ("postgresql", "postgres"):
        from ._postgres_store import PostgresCheckpointStore

        return PostgresCheckpointStore(text, **options)
    if options:
        raise TypeError(f"options {sorted(options)} are for PostgreSQL stores only")
    if text == "memory:":
        return MemoryCheckpointStore()
    if scheme == "file":
        return FileCheckpointStore(text[len("file:"):].removeprefix("//") or ".")
    if scheme and len(scheme) > 1 and scheme.isalpha() and text[len(scheme) + 1 :].startswith("//"):
        raise ValueError(f"unknown store address scheme {scheme!r}: use a folder, file:PATH, "
                         "memory: or postgresql://...")
    return FileCheckpointStore(text)
