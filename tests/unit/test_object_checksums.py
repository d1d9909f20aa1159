"""The object store's read check: objects carry a CRC-32 of their bytes; objects written
before carry a SHA-256, still checked; a mismatch either way is caught."""

from __future__ import annotations

import hashlib
import zlib

from imagejobs.store.objects import _intact, _Meta

DATA = bytes(range(256)) * 4096  # 1 MiB


def test_a_crc32_meta_checks_the_bytes() -> None:
    meta: _Meta = {"size": len(DATA), "crc32": zlib.crc32(DATA)}
    assert _intact(DATA, meta)
    assert not _intact(DATA[:-1] + b"\x00", meta)


def test_an_older_sha256_meta_is_still_checked() -> None:
    meta: _Meta = {"size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}
    assert _intact(DATA, meta)
    assert not _intact(DATA[:-1] + b"\x00", meta)
    assert not _intact(DATA, {"size": len(DATA)})  # no checksum at all: not intact


def test_an_inline_object_has_no_checksum_beyond_its_size() -> None:
    assert _intact(b"small", {"size": 5, "inline": True})
