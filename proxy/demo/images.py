"""Generated demo images: small valid PNGs of chosen sizes, no imaging library needed."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def portrait_png(size: int, hue: int) -> bytes:
    """A size x size RGB picture: a coloured background, a lighter head and shoulders, and
    some noise so that larger images are also larger files."""
    rows = []
    base = [(hue * 53) % 200 + 30, (hue * 97) % 200 + 30, (hue * 31) % 200 + 30]
    centre, radius = size / 2, size / 5
    seed = hue * 7919 + 1
    for y in range(size):
        row = bytearray(b"\x00")  # filter type 0 for this scanline
        for x in range(size):
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            noise = (seed >> 16) % 24
            head = (x - centre) ** 2 + (y - size * 0.4) ** 2 < radius**2
            body = y > size * 0.65 and abs(x - centre) < size * (0.1 + (y / size - 0.65))
            tone = 90 if head or body else 0
            row += bytes(min(255, c + tone + noise) for c in base)
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + _chunk(b"IEND", b"")
    )
