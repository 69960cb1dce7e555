"""Bones of the phantom: vertebrae (one of them labelled), ribs and pelvis.

Bone has a bright cortical shell (about 700 HU) around cancellous bone (about 350-450 HU);
intervertebral discs are about 85 HU and the spinal canal about 15 HU. Positions are in the
body frame of :mod:`medlsam.synth.body` (mm, RAS+, origin at the centre of L1).
"""

from __future__ import annotations

import numpy as np

from medlsam.synth.body import Body
from medlsam.synth.shapes import Blob, Canvas, Tube, euler

CORTEX_HU = 700.0
DISC_HU = 85.0
CSF_HU = 15.0
CARTILAGE_HU = 160.0


def _bone(
    canvas: Canvas, outer: Blob | Tube, inner: Blob | Tube, cancellous: float, label: int = 0
) -> None:
    canvas.draw(outer, CORTEX_HU, label, grain=40.0)
    canvas.draw(inner, cancellous, label, grain=60.0)


def _tube_segment(z0: float, z1: float, cx: float, cy: float, rx: float, ry: float) -> Tube:
    return Tube.from_points([(z0, cx, cy, rx, ry), (z1, cx, cy, rx, ry)])


def draw_spine(canvas: Canvas, body: Body, rng: np.random.Generator, vertebra_label: int) -> None:
    """Vertebral bodies, discs, arches and the spinal canal from L5 up to the top of the grid.

    The whole first lumbar vertebra (body and arch) gets ``vertebra_label``.
    """
    grid = canvas.grid
    zmin, zmax = grid.axis_mm(2)[[0, -1]]
    h = body.level
    cancellous = rng.uniform(340.0, 440.0)
    top = int(np.ceil(zmax / h)) + 1
    for n in range(-4, max(top, -3)):
        zc = n * h + rng.normal(0.0, 1.0)
        if zc + h < zmin:
            continue
        grow = 1.0 + 0.035 * (-n) if n < 0 else 1.0 - 0.03 * n
        rx, ry = 21.0 * body.sx * grow, 16.0 * body.sy * grow
        yv = float(body.spine_y(zc))
        half = 0.37 * h
        label = vertebra_label if n == 0 else 0
        outer = _tube_segment(zc - half, zc + half, 0.0, yv, rx, ry)
        inner = _tube_segment(zc - half + 2.5, zc + half - 2.5, 0.0, yv, rx - 3.0, ry - 3.0)
        _bone(canvas, outer, inner, cancellous, label)
        canvas.draw(_tube_segment(zc + half, zc + h - half, 0.0, yv, rx * 0.97, ry * 0.97), DISC_HU)
        # posterior arch: ring around the canal, spinous and transverse processes
        yc = yv - ry - 8.0 * body.sy
        arch_hu = cancellous + 120.0
        ring = _tube_segment(zc - 0.33 * h, zc + 0.3 * h, 0.0, yc, 14.0 * body.sx, 12.0 * body.sy)
        canvas.draw(ring, arch_hu, label, grain=50.0)
        spinous = Blob.random(
            rng,
            (0.0, yc - 22.0 * body.sy, zc - 5.0 * body.sz),
            (4.5, 16.0 * body.sy, 8.0),
            rot=euler(0.45, 0.0, 0.0),
            bumpiness=0.03,
        )
        canvas.draw(spinous, arch_hu, label, grain=50.0)
        reach = 24.0 if n <= 0 else 17.0
        for side in (1.0, -1.0):
            transverse = Blob.random(
                rng,
                (side * 24.0 * body.sx, yc + 4.0, zc + 2.0),
                (reach * body.sx, 5.0, 5.5),
                bumpiness=0.03,
            )
            canvas.draw(transverse, arch_hu, label, grain=50.0)
    # spinal canal (cerebrospinal fluid) along the whole column
    zs = np.arange(-4.8 * h, zmax + h, 20.0)
    points = [
        (z, 0.0, float(body.spine_y(z)) - 16.0 * body.sy - 8.0 * body.sy, 7.0, 7.0) for z in zs
    ]
    canvas.draw(Tube.from_points(points), CSF_HU, 0, grain=4.0)


def draw_ribs(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Six pairs of ribs (T12 up to T7) curving from the spine round to the front, descending.

    Each rib follows the inner abdominal wall; lower ribs are short (floating ribs), upper ribs
    reach the front where they turn into costal cartilage.
    """
    grid = canvas.grid
    h = body.level
    reach = {1: 1.3, 2: 1.65, 3: 2.25, 4: 2.55, 5: 2.75, 6: 2.9}
    hu = rng.uniform(480.0, 600.0)
    heads = {(n, side): n * h + 0.3 * h + rng.normal(0.0, 2.0) for n in reach for side in (1, -1)}
    drops = {n: (62.0 + 8.0 * (n - 1)) * body.sz for n in reach}
    z_lo = min(heads[n, s] - drops[n] for n, s in heads) - 12.0
    z_hi = max(heads.values()) + 12.0
    extent, depth = body.A * 1.15 + body.wall, body.B * 1.15 + body.wall
    for side in (1, -1):
        block = grid.block(
            (min(0.0, side * extent), -depth, z_lo), (max(0.0, side * extent), depth, z_hi)
        )
        if block is None:
            continue
        x, y, z = grid.coords(block)
        a, b = body.cavity_axes(grid.axis_mm(2)[block[2]][None, None, :])
        a = (a + 0.5 * body.wall).astype(np.float32)
        b = (b + 0.5 * body.wall).astype(np.float32)
        u, v = side * x / a, -y / b
        phi = np.arctan2(u, v)
        radius_mm = np.sqrt((a * np.sin(phi)) ** 2 + (b * np.cos(phi)) ** 2)
        ring = (np.abs(np.sqrt(u * u + v * v) - 1.0) * radius_mm < 4.0) & (u > 0) & (phi > 0.22)
        slope = (np.clip(phi, 0.0, np.pi) / np.float32(np.pi)) ** np.float32(1.3)
        for n, phi_end in reach.items():
            near = ring & (np.abs(z - (heads[n, side] - drops[n] * slope)) < 5.0) & (phi < phi_end)
            canvas.paint(block, near & (phi < 2.25), hu, 0, grain=50.0)
            if phi_end > 2.25:
                canvas.paint(block, near & (phi >= 2.25), CARTILAGE_HU, 0, grain=15.0)


def draw_pelvis(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Sacrum, iliac wings, pubic bones, femoral heads and the top of the femoral shafts."""
    sx, sy, sz = body.sx, body.sy, body.sz
    cancellous = rng.uniform(260.0, 340.0)
    sacrum = Blob.random(
        rng,
        body.at(0.0, -66.0, -205.0),
        (42.0 * sx, 20.0 * sy, 50.0 * sz),
        rot=euler(0.55, 0.0, 0.0),
        bumpiness=0.04,
    )
    _bone(canvas, sacrum, sacrum.scaled(0.8), cancellous)
    for side in (1.0, -1.0):
        wing = Blob.random(
            rng,
            body.at(side * 92.0, -26.0, -182.0),
            (9.0 * sx, 56.0 * sy, 42.0 * sz),
            rot=euler(0.0, 0.0, -side * 0.55),
            bumpiness=0.04,
        )
        _bone(canvas, wing, wing.scaled(0.65), cancellous)
        pubis = Blob.random(
            rng,
            body.at(side * 32.0, 56.0, -265.0),
            (32.0 * sx, 9.0 * sy, 12.0 * sz),
            rot=euler(0.0, 0.0, side * 0.45),
            bumpiness=0.03,
        )
        _bone(canvas, pubis, pubis.scaled(0.6), cancellous)
        head_r = 23.0 * (sx + sy) / 2.0
        head = Blob.random(rng, body.at(side * 80.0, 12.0, -262.0), (head_r,) * 3, bumpiness=0.01)
        _bone(canvas, head, head.scaled(0.8), cancellous)
        shaft = Tube.from_points(
            [
                (-262.0 * sz, side * 84.0 * sx, 12.0 * sy, 14.0, 14.0),
                (-300.0 * sz, side * 98.0 * sx, 15.0 * sy, 15.0, 15.0),
                (-440.0 * sz, side * 104.0 * sx, 20.0 * sy, 14.0, 14.0),
            ]
        )
        canvas.draw(shaft, CORTEX_HU - 50.0, 0, grain=40.0)
