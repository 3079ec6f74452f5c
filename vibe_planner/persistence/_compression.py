"""Optional compression of checkpoint documents: gzip (standard library) or zstd (``[zstd]``).

A compressed document is recognised by its first bytes, so readers need no setting: gzip files
start ``1f 8b``, zstd frames ``28 b5 2f fd``, and a plain document with ``{``. The checksum
inside is that of the uncompressed document, so compressing changes nothing it proves.
"""

from __future__ import annotations

import gzip
import importlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .._exceptions import CheckpointCorruptError

__all__ = ["Compression", "compressor", "decompress"]

Compression = Literal["gzip", "zstd"]
"""How checkpoint documents are compressed (``None``: not at all, the default).

- ``gzip``: the standard library's, level 6.
- ``zstd``: Zstandard, level 3, from the ``zstandard`` package (``pip install vibe-planner[zstd]``).
"""

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_SIZE = 1 << 31
"""Largest document a compressed file may expand to (a bomb is refused, not expanded)."""


def _zstandard() -> Any:
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def compressor(compression: Compression | None) -> Callable[[bytes], bytes] | None:
    """Return the function compressing a document, or ``None``; `ValueError` if unavailable."""
    if compression is None:
        return None
    if compression == "gzip":
        return lambda data: gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        module = _zstandard()
        if module is None:
            raise ValueError('compression="zstd" needs the zstandard package: '
                             "pip install 'vibe-planner[zstd]'")
        level = module.ZstdCompressor(level=3)
        return lambda data: bytes(level.compress(data))
    raise ValueError(f"compression must be None, 'gzip' or 'zstd', got {compression!r}")


def decompress(raw: bytes, path: Path) -> bytes:
    """Return the document in *raw*, expanding it if it is compressed (`CheckpointCorruptError`)."""
    if raw[:1] == b"{" or not raw:
        return raw
    if raw.startswith(_GZIP_MAGIC):
        try:
            expander = zlib.decompressobj(wbits=31)
            data = expander.decompress(raw, _MAX_SIZE)
        except zlib.error as exc:
            raise CheckpointCorruptError(path, f"damaged gzip data: {exc}") from None
        if not expander.eof or expander.unconsumed_tail:
            raise CheckpointCorruptError(path, "truncated gzip data (or larger than 2 GiB)")
        return data
    if raw.startswith(_ZSTD_MAGIC):
        module = _zstandard()
        if module is None:
            raise CheckpointCorruptError(path, "compressed with zstd, and the zstandard package is "
                                         "not installed: pip install 'vibe-planner[zstd]'")
        try:
            return bytes(module.ZstdDecompressor().decompress(raw, max_output_size=_MAX_SIZE))
        except module.ZstdError as exc:
            raise CheckpointCorruptError(path, f"damaged zstd data: {exc}") from None
    return raw  # not compressed: the JSON parser says what is wrong with it
