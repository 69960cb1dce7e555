"""PNG files and simple drawing with numpy and zlib only (no matplotlib, no Pillow).

Images are ``(H, W, 3)`` uint8 RGB arrays, row 0 at the top. Text uses a built-in 5x7 bitmap
font (capitals, digits and common signs; lower case is drawn in capitals).
"""

from __future__ import annotations

import os
import struct
import zlib
from functools import cache
from pathlib import Path

import numpy as np

from medlsam.io import atomic_write_bytes

_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Each glyph: its character, then 7 rows of 5 pixels ("#" on), top row first.
_GLYPHS = r"""
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ####. #...# #...# #...# #...# #...# ####.
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ##### ...#. ..#.. ...#. ....# #...# .###.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
. ..... ..... ..... ..... ..... .##.. .##..
, ..... ..... ..... ..... .##.. ..#.. .#...
: ..... .##.. .##.. ..... .##.. .##.. .....
- ..... ..... ..... ##### ..... ..... .....
_ ..... ..... ..... ..... ..... ..... #####
= ..... ..... ##### ..... ##### ..... .....
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
[ .###. .#... .#... .#... .#... .#... .###.
] .###. ...#. ...#. ...#. ...#. ...#. .###.
/ ..... ....# ...#. ..#.. .#... #.... .....
% ##... ##..# ...#. ..#.. .#... #..## ...##
! ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..
? .###. #...# ....# ...#. ..#.. ..... ..#..
> .#... ..#.. ...#. ....# ...#. ..#.. .#...
< ...#. ..#.. .#... #.... .#... ..#.. ...#.
' ..#.. ..#.. .#... ..... ..... ..... .....
"""
GLYPH_H, GLYPH_W = 7, 5


@cache
def _font() -> dict[str, np.ndarray]:
    font = {" ": np.zeros((GLYPH_H, GLYPH_W), dtype=bool)}
    for line in _GLYPHS.strip().splitlines():
        char, *rows = line.split(" ")
        font[char] = np.array([[p == "#" for p in row] for row in rows], dtype=bool)
    return font


# --------------------------------------------------------------------------------------------
# files


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8 image (8 bit, no interlace)."""
    image = np.asarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
    ):
        raise ValueError(f"expected (H, W, 3) or (H, W) uint8, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    colour = 2 if image.ndim == 3 else 0
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1)  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write ``image`` (see :func:`encode_png`) as a PNG file, atomically."""
    return atomic_write_bytes(path, encode_png(image))


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int) -> np.ndarray:
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for r in range(height):
        kind = int(raw[r, 0])
        line = raw[r, 1:].astype(np.int64)
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = (line + prev) & 0xFF
        elif kind in (3, 4):
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up = prev[i]
                if kind == 3:
                    pred = (left + up) // 2
                else:
                    corner = prev[i - bpp] if i >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        out[r] = line
        prev = line
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced grey or RGB PNG (what :func:`encode_png` writes)."""
    if not data.startswith(_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, idat, header = len(_SIGNATURE), b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (0, 2) or interlace:
        raise ValueError("only 8-bit grey/RGB non-interlaced PNGs are supported")
    channels = 3 if colour == 2 else 1
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    pixels = _unfilter(raw, height, stride, channels)
    return pixels.reshape(height, width, channels) if channels == 3 else pixels


# --------------------------------------------------------------------------------------------
# drawing


def text_size(text: str, scale: int = 2) -> tuple[int, int]:
    """``(height, width)`` in pixels of ``text`` drawn at ``scale``."""
    return GLYPH_H * scale, max(0, len(text) * (GLYPH_W + 1) * scale - scale)


def draw_text(
    image: np.ndarray,
    text: str,
    row: int,
    col: int,
    color: tuple[int, int, int] = (255, 255, 255),
    scale: int = 2,
    background: tuple[int, int, int] | None = (0, 0, 0),
    pad: int = 2,
) -> None:
    """Draw ``text`` in place with its top-left corner at ``(row, col)`` (clipped to the image).

    Characters the font lacks are drawn as ``?``.
    """
    font = _font()
    h, w = text_size(text, scale)
    if background is not None:
        fill_rect(image, row - pad, col - pad, row + h + pad, col + w + pad, background)
    for n, char in enumerate(text.upper()):
        glyph = font.get(char, font["?"])
        big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        r0, c0 = row, col + n * (GLYPH_W + 1) * scale
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1 = min(r0 + big.shape[0], image.shape[0])
        cc1 = min(c0 + big.shape[1], image.shape[1])
        if rr1 <= rr0 or cc1 <= cc0:
            continue
        part = big[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
        image[rr0:rr1, cc0:cc1][part] = color


def fill_rect(
    image: np.ndarray, r0: int, c0: int, r1: int, c1: int, color: tuple[int, int, int]
) -> None:
    """Fill rows ``r0..r1-1`` and columns ``c0..c1-1`` (clipped) with ``color``."""
    r0, c0 = max(int(r0), 0), max(int(c0), 0)
    r1, c1 = min(int(r1), image.shape[0]), min(int(c1), image.shape[1])
    if r1 > r0 and c1 > c0:
        image[r0:r1, c0:c1] = color


def draw_rect(
    image: np.ndarray,
    r0: float,
    c0: float,
    r1: float,
    c1: float,
    color: tuple[int, int, int],
    width: int = 2,
) -> None:
    """Outline of the rectangle with corners ``(r0, c0)`` and ``(r1, c1)``, ``width`` pixels."""
    r0, c0, r1, c1 = (int(round(v)) for v in (r0, c0, r1, c1))
    fill_rect(image, r0, c0, r0 + width, c1 + 1, color)
    fill_rect(image, r1 - width + 1, c0, r1 + 1, c1 + 1, color)
    fill_rect(image, r0, c0, r1 + 1, c0 + width, color)
    fill_rect(image, r0, c1 - width + 1, r1 + 1, c1 + 1, color)
