"""Soft tissue of the phantom: body wall, lungs, muscles, bowel, vessels and labelled organs.

All positions are template millimetres scaled to the subject by :class:`~medlsam.synth.body.Body`
(RAS+: x toward the patient's Right, y Anterior, z Superior; origin at the centre of L1), plus a
few millimetres of random jitter per organ. Hounsfield values are drawn per subject around the
means documented in :data:`medlsam.synth.phantom.ORGANS`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medlsam.synth.body import Body
from medlsam.synth.shapes import Blob, Canvas, Tube, chain, euler, rotation

FAT_HU = -100.0
MUSCLE_HU = 50.0
GAS_HU = -980.0


def draw_wall(
    canvas: Canvas, body: Body, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Skin outline filled with fat, the muscle wall, and the cavity.

    Returns:
        ``(body_mask, cavity_mask)``, full-volume booleans ``(I, J, K)``.
    """
    g = canvas.grid
    z = g.axis_mm(2)[None, None, :]  # the outline follows the slice height, not the warp
    a_out, b_out = body.outline(z)
    a_cav, b_cav = body.cavity_axes(z)
    inside_body = (g.x / a_out) ** 2 + (g.y / b_out) ** 2 < 1.0
    in_muscle = (g.x / (a_cav + body.wall)) ** 2 + (g.y / (b_cav + body.wall)) ** 2 < 1.0
    cavity = (g.x / a_cav) ** 2 + (g.y / b_cav) ** 2 < 1.0
    block = (slice(None),) * 3
    canvas.paint(block, inside_body, FAT_HU + rng.normal(0.0, 8.0), 0, grain=8.0)
    canvas.paint(block, in_muscle & inside_body, MUSCLE_HU + rng.normal(0.0, 5.0), 0, grain=8.0)
    return inside_body, cavity


def diaphragm_height(canvas: Canvas, body: Body) -> np.ndarray:
    """Height of the diaphragm (mm) above every column of the grid, ``(I, J, 1)``."""
    g = canvas.grid
    return body.dome(g.axis_mm(0)[:, None, None], g.axis_mm(1)[None, :, None])


def draw_viscera_background(
    canvas: Canvas, cavity: np.ndarray, dome: np.ndarray, coarse: np.ndarray
) -> np.ndarray:
    """Fill the cavity below the diaphragm with a mix of fat, bowel loops and gas bubbles.

    ``dome`` is :func:`diaphragm_height`; ``coarse`` a smooth random field ``(I, J, K)``
    (std ~1) whose high values become bowel.
    Returns the mask of the abdominal cavity (below the diaphragm), ``(I, J, K)`` bool.
    """
    g = canvas.grid
    abdomen = cavity & (g.z < dome - 4.0)
    t = canvas.texture
    bowel = coarse > -0.1
    values = np.where(bowel, 30.0 + 10.0 * t, -95.0 + 10.0 * t)
    values = np.where(bowel & (t > 2.0), GAS_HU, values)
    canvas.image[abdomen] = values[abdomen]
    canvas.label[abdomen] = 0
    diaphragm = cavity & (g.z >= dome - 4.0) & (g.z <= dome)
    canvas.paint((slice(None),) * 3, diaphragm, MUSCLE_HU, 0, grain=8.0)
    return abdomen


def draw_thorax(
    canvas: Canvas, body: Body, rng: np.random.Generator, cavity: np.ndarray, dome: np.ndarray
) -> None:
    """Lung bases above the diaphragm (with vessels), the heart and the mediastinum."""
    g = canvas.grid
    thorax = cavity & (g.z > dome)
    t = canvas.texture
    lung = np.where(t > 1.9, -60.0 + 20.0 * t, -850.0 + rng.normal(0, 15) + 25.0 * t)
    canvas.image[thorax] = lung[thorax]
    canvas.label[thorax] = 0
    top = g.axis_mm(2)[-1] + 50.0
    spine = float(body.spine_y(body.apex_l))
    mediastinum = Tube.from_points(
        [
            (body.apex_l - 30.0, -10.0 * body.sx, spine + 45.0, 28.0 * body.sx, 45.0),
            (top, -10.0 * body.sx, spine + 45.0, 28.0 * body.sx, 45.0),
        ]
    )
    canvas.draw(mediastinum, -80.0, 0, grain=10.0, clip=thorax)
    heart = Blob.random(
        rng,
        body.at(-22.0, 30.0, 0.0) + (0.0, 0.0, body.apex_l + 48.0 * body.sz),
        (62.0 * body.sx, 46.0 * body.sy, 52.0 * body.sz),
        rot=euler(0.0, 0.3, -0.5),
    )
    canvas.draw(heart, 48.0, 0, grain=8.0, clip=thorax)
    canvas.draw(heart.scaled(0.7), 135.0, 0, grain=10.0, clip=thorax)  # contrast blood pool


def draw_muscles(canvas: Canvas, body: Body, rng: np.random.Generator, inside: np.ndarray) -> None:
    """Paraspinal, psoas/iliopsoas and gluteal muscles."""
    g = canvas.grid
    zmax = g.axis_mm(2)[-1] + 40.0
    hu = MUSCLE_HU + rng.normal(0.0, 4.0)
    sx, sy, sz = body.sx, body.sy, body.sz
    for side in (1.0, -1.0):
        paraspinal = Tube.from_points(
            [
                (-200.0 * sz, side * 30.0 * sx, -84.0 * sy, 24.0 * sx, 20.0 * sy),
                (-120.0 * sz, side * 40.0 * sx, -84.0 * sy, 32.0 * sx, 22.0 * sy),
                (zmax, side * 36.0 * sx, -90.0 * sy, 26.0 * sx, 18.0 * sy),
            ]
        )
        canvas.draw(paraspinal, hu, 0, grain=8.0, clip=inside)
        psoas = Tube.from_points(
            [
                (-265.0 * sz, side * 62.0 * sx, 8.0 * sy, 20.0 * sx, 18.0 * sy),
                (-180.0 * sz, side * 52.0 * sx, -22.0 * sy, 24.0 * sx, 22.0 * sy),
                (-110.0 * sz, side * 40.0 * sx, -42.0 * sy, 21.0 * sx, 19.0 * sy),
                (5.0 * sz, side * 28.0 * sx, -50.0 * sy, 7.0 * sx, 7.0 * sy),
            ]
        )
        canvas.draw(psoas, hu, 0, grain=8.0, clip=inside)
        gluteal = Blob.random(
            rng, body.at(side * 92.0, -62.0, -240.0), (48.0 * sx, 42.0 * sy, 60.0 * sz)
        )
        canvas.draw(gluteal, hu, 0, grain=8.0, clip=inside)


def draw_colon(canvas: Canvas, body: Body, rng: np.random.Generator, abdomen: np.ndarray) -> None:
    """The colon framing the abdomen (unlabelled), with mottled gas and stool."""
    sx, sy, sz = body.sx, body.sy, body.sz
    parts: list[Blob | Tube] = [
        Tube.from_points(
            [
                (-150.0 * sz, 98.0 * sx, -4.0 * sy, 19.0, 19.0),
                (-25.0 * sz, 95.0 * sx, 0.0, 18.0, 18.0),
            ]
        ),
        Tube.from_points(
            [
                (-145.0 * sz, -102.0 * sx, -12.0 * sy, 15.0, 15.0),
                (45.0 * sz, -98.0 * sx, -20.0 * sy, 16.0, 16.0),
            ]
        ),
    ]
    parts += chain(
        rng,
        [body.at(92, 10, -30), body.at(40, 58, -45), body.at(-30, 55, -30), body.at(-96, 5, 35)],
        [(17, 17, 17)] * 4,
        steps=3,
    )
    parts += chain(
        rng,
        [
            body.at(-90, -5, -150),
            body.at(-30, 20, -185),
            body.at(0, -45, -215),
            body.at(0, -50, -270),
        ],
        [(15, 15, 15)] * 4,
        steps=3,
    )
    t = canvas.texture
    for part in parts:
        block, mask = canvas.shape_mask(part, abdomen)
        if block is None:
            continue
        content = np.where(t[block] > 0.2, GAS_HU, 15.0 + 30.0 * t[block])
        canvas.image[block][mask] = content[mask]
        canvas.label[block][mask] = 0


def _jitter(rng: np.random.Generator, scale: float = 5.0) -> np.ndarray:
    return rng.normal(0.0, [scale, scale, scale * 1.4])


def draw_organs(
    canvas: Canvas,
    body: Body,
    rng: np.random.Generator,
    abdomen: np.ndarray,
    ids: Mapping[str, int],
    hu: Mapping[str, float],
) -> None:
    """The labelled abdominal organs, painted in an order where later ones win overlaps.

    ``ids`` maps organ names to label ids, ``hu`` organ names to this subject's mean HU.
    """
    at, rad, s = body.at, body.radii, body.organ
    j = _jitter
    # liver: right lobe, a bridge, and the left lobe reaching across the midline
    liver = [
        Blob.random(rng, at(70, -8, 48) + j(rng), rad(64, 76, 70), rotation(rng, (6, 6, 8))),
        Blob.random(rng, at(30, 22, 60) + j(rng), rad(48, 48, 42), rotation(rng, (6, 6, 8))),
        Blob.random(rng, at(-18, 46, 66) + j(rng), rad(50, 28, 30), rotation(rng, (8, 8, 10))),
    ]
    canvas.draw(liver, hu["liver"], ids["liver"], grain=7.0, clip=abdomen)
    gall = Blob.random(
        rng,
        at(42, 34, -2) + j(rng, 4.0),
        rad(14, 15, 30) * rng.uniform(0.8, 1.2),
        euler(0.5, -0.25, 0.0) @ rotation(rng, (10, 10, 10)),
    )
    canvas.draw(gall, hu["gallbladder"], ids["gallbladder"], grain=3.0, clip=abdomen)
    spleen = Blob.random(
        rng,
        at(-86, -34, 52) + j(rng),
        rad(26, 50, 56) * rng.uniform(0.85, 1.15),
        euler(0.0, 0.2, -0.55) @ rotation(rng, (8, 8, 10)),
        bumpiness=0.1,
    )
    canvas.draw(spleen, hu["spleen"], ids["spleen"], grain=6.0, clip=abdomen)
    # stomach: fundus under the left dome, body, antrum, pylorus; wall, fluid and a gas cap
    path = [at(-58, -8, 78), at(-56, 20, 45), at(-34, 40, 16), at(-2, 46, 4), at(22, 32, 6)]
    path = [p + j(rng, 3.0) for p in path]
    widths = np.array([36, 34, 28, 20, 13])[:, None] * np.ones(3) * s * rng.uniform(0.85, 1.15)
    stomach = chain(rng, path, widths, steps=3)
    sid = ids["stomach"]
    canvas.draw(stomach, hu["stomach"] + 25.0, sid, grain=6.0, clip=abdomen)
    inside = canvas.label == sid
    lumen = [b.scaled(0.82) for b in stomach]
    canvas.draw(lumen, hu["stomach"] - 5.0, sid, grain=8.0, clip=inside)
    lumen_mask = canvas.union_mask(lumen, inside)
    if lumen_mask.any():  # supine: gas rises to the front, above a level holding 0-15 % of it
        ys = canvas.grid.y[lumen_mask]
        level = np.quantile(ys, 1.0 - rng.uniform(0.0, 0.15))
        canvas.paint((slice(None),) * 3, lumen_mask & (canvas.grid.y > level), GAS_HU, sid)
    pancreas = chain(
        rng,
        [at(26, 16, -12), at(6, 14, -4), at(-26, 4, 6), at(-62, -22, 22)],
        np.array([[17, 12, 15], [12, 9, 12], [12, 9, 12], [11, 8, 11]]) * s,
        steps=3,
    )
    canvas.draw(pancreas, hu["pancreas"], ids["pancreas"], grain=12.0, clip=abdomen)
    for name, side, z in (("kidney_right", 1.0, -22.0), ("kidney_left", -1.0, -6.0)):
        kid = ids[name]
        tilt = euler(0.25, -side * 0.22, side * 0.5) @ rotation(rng, (6, 6, 8))
        kidney = Blob.random(rng, at(side * 64, -44, z) + j(rng), rad(25, 23, 52), tilt, 0.05)
        canvas.draw(kidney, hu[name] + 12.0, kid, grain=5.0, clip=abdomen)  # cortex
        inside = canvas.label == kid
        canvas.draw(kidney.scaled(0.7), hu[name] - 8.0, kid, grain=5.0, clip=inside)  # medulla
        hilum = Blob(
            kidney.center + kidney.rot @ np.array([-side * 0.8 * kidney.radii[0], 0.0, 0.0]),
            kidney.radii * np.array([0.45, 0.4, 0.35]),
            kidney.rot,
            np.zeros((0, 3)),
            np.zeros(0),
            np.zeros(0),
        )
        canvas.draw(hilum, FAT_HU + 20.0, 0, grain=10.0, clip=inside)  # renal sinus fat


def draw_vessels(
    canvas: Canvas,
    body: Body,
    rng: np.random.Generator,
    ids: Mapping[str, int],
    hu: Mapping[str, float],
    inside: np.ndarray,
) -> None:
    """Inferior vena cava and iliac veins, the aorta (labelled) and the iliac arteries."""
    sx, sz = body.sx, body.sz
    top = canvas.grid.axis_mm(2)[-1] + 30.0

    def y(z_template: float) -> float:  # antero-posterior position of the spine at a level
        return float(body.spine_y(z_template * sz))

    fork = -102.0 * sz + rng.normal(0.0, 5.0)
    dx = rng.normal(0.0, 3.0)
    ivc = Tube.from_points(
        [
            (-135.0 * sz, 12.0 * sx, y(-135) + 30.0, 11.0, 9.0),
            (0.0, 22.0 * sx + dx, y(0) + 32.0, 13.0, 10.0),
            (body.apex_r + 10.0, 24.0 * sx, y(100) + 48.0, 14.0, 12.0),
        ]
    )
    canvas.draw(ivc, 95.0, 0, grain=6.0, clip=inside)
    r = rng.uniform(10.0, 12.5)
    aorta = Tube.from_points(
        [
            (fork, -6.0 * sx + dx, y(-100) + 27.0, r * 0.85, r * 0.85),
            (0.0, -14.0 * sx + dx, y(0) + 28.0, r * 0.95, r * 0.95),
            (100.0 * sz, -20.0 * sx + dx, y(100) + 10.0, r, r),
            (top, -26.0 * sx + dx, y(200) - 2.0, r * 1.05, r * 1.05),
        ]
    )
    canvas.draw(aorta, hu["aorta"], ids["aorta"], grain=6.0, clip=inside)
    for side in (1.0, -1.0):
        vein = Tube.from_points(
            [
                (-262.0 * sz, side * 70.0 * sx, 20.0, 9.0, 9.0),
                (-190.0 * sz, side * 40.0 * sx, -14.0, 9.0, 8.0),
                (-135.0 * sz, side * 8.0 * sx + 12.0 * sx, y(-135) + 26.0, 9.0, 8.0),
            ]
        )
        canvas.draw(vein, 90.0, 0, grain=6.0, clip=inside)
        artery = Tube.from_points(
            [
                (-262.0 * sz, side * 76.0 * sx, 28.0, 6.0, 6.0),
                (-190.0 * sz, side * 46.0 * sx, -4.0, 7.0, 7.0),
                (fork, -6.0 * sx + dx + side * 4.0, y(-100) + 27.0, 7.5, 7.5),
            ]
        )
        canvas.draw(artery, hu["aorta"], 0, grain=6.0, clip=inside)


def draw_bladder(
    canvas: Canvas, body: Body, rng: np.random.Generator, label: int, hu: float, abdomen: np.ndarray
) -> None:
    """The urinary bladder low in the pelvis (filling varies), with a thin wall."""
    fill = rng.uniform(0.75, 1.2)
    bladder = Blob.random(
        rng,
        body.at(0, 30, -226) + _jitter(rng, 4.0),
        np.array([42.0, 33.0, 34.0]) * fill * body.organ,
        rotation(rng, (8, 8, 10)),
        bumpiness=0.05,
    )
    canvas.draw(bladder, 35.0, label, grain=5.0, clip=abdomen)
    canvas.draw(bladder.scaled(0.9), hu, label, grain=3.0, clip=canvas.label == label)
