"""medlsam.png: PNG encoding/decoding with zlib and the bitmap font."""

from __future__ import annotations

import io

import numpy as np
import pytest

from medlsam.png import decode_png, draw_rect, draw_text, encode_png, text_size, write_png


@pytest.mark.parametrize("shape", [(7, 5, 3), (16, 33), (1, 1, 3)])
def test_round_trip(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)


def test_decodes_every_filter_type_written_by_pillow():
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    image = np.cumsum(rng.integers(0, 3, (40, 50, 3)), axis=1).astype(np.uint8)  # smooth rows
    buffer = io.BytesIO()
    pil.fromarray(image).save(buffer, format="PNG", optimize=True)
    np.testing.assert_array_equal(decode_png(buffer.getvalue()), image)


def test_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        decode_png(b"GIF89a")
    path = write_png(tmp_path / "sub" / "a.png", np.zeros((2, 3, 3), np.uint8))
    assert decode_png(path.read_bytes()).shape == (2, 3, 3)


def test_text_and_rectangles_draw_where_asked():
    image = np.zeros((40, 120, 3), np.uint8)
    draw_text(image, "Liver 5", 5, 5, color=(255, 0, 0), scale=2, background=None)
    h, w = text_size("Liver 5", 2)
    lit = np.nonzero(image[..., 0])
    assert lit[0].min() >= 5 and lit[0].max() < 5 + h and lit[1].max() < 5 + w
    other = np.zeros_like(image)
    draw_text(other, "LIVER 5", 5, 5, color=(255, 0, 0), scale=2, background=None)
    np.testing.assert_array_equal(image, other)  # lower case is drawn in capitals
    unknown = np.zeros_like(image)
    draw_text(unknown, "~", 0, 0, scale=1, background=None)
    question = np.zeros_like(image)
    draw_text(question, "?", 0, 0, scale=1, background=None)
    np.testing.assert_array_equal(unknown, question)
    box = np.zeros((20, 20, 3), np.uint8)
    draw_rect(box, 2, 3, 10, 12, (0, 255, 0), width=1)
    assert box[2, 3:13, 1].all() and box[10, 3:13, 1].all() and not box[5, 5:10, 1].any()
    draw_text(box, "CLIPPED TEXT", 15, 15, scale=2)  # partly outside: no error


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def test_decodes_hand_filtered_rows_of_all_five_types():
    import struct
    import zlib

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (10, 6, 3), dtype=np.uint8)
    raw = image.reshape(10, -1).astype(int)
    lines = []
    for r in range(10):
        kind, line, prev = r % 5, raw[r], raw[r - 1] if r else np.zeros(18, int)
        out = []
        for i in range(18):
            a = line[i - 3] if i >= 3 else 0
            c = prev[i - 3] if i >= 3 else 0
            pred = [0, a, prev[i], (a + prev[i]) // 2, _paeth(a, prev[i], c)][kind]
            out.append((line[i] - pred) % 256)
        lines.append(bytes([kind, *out]))
    png = bytearray(encode_png(image))
    start = png.index(b"IDAT") - 4
    end = png.index(b"IEND") - 4
    payload = zlib.compress(b"".join(lines))
    chunk = struct.pack(">I", len(payload)) + b"IDAT" + payload
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + payload) & 0xFFFFFFFF)
    np.testing.assert_array_equal(decode_png(bytes(png[:start]) + chunk + bytes(png[end:])), image)
