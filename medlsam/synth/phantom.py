"""A procedural abdominal CT phantom: one random, anatomically consistent subject.

Every subject has the same organs in the same relative places; the seed varies body size and
shape, organ size, shape and position, the field of view along the body axis, voxel spacing,
noise, and (when written by :mod:`medlsam.synth.cohort`) the axis orientation of the files.

Drawn with numpy and scipy only; a default subject (128 x 128 x about 100 voxels) takes about a
second.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medlsam.errors import InputError
from medlsam.synth import organs, skeleton
from medlsam.synth.body import Body
from medlsam.synth.shapes import Canvas, Grid, smooth_field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Organ:
    """A labelled structure of the phantom: id, name, mean HU and its spread between subjects."""

    label: int
    name: str
    hu: float
    hu_sd: float
    note: str = ""


#: The labelled organs of the phantom (label ids 1..10).
ORGANS: tuple[Organ, ...] = (
    Organ(1, "liver", 60.0, 6.0, "right upper quadrant under the right diaphragm dome; two lobes"),
    Organ(2, "spleen", 50.0, 5.0, "left upper quadrant, posterolateral, under the left dome"),
    Organ(
        3,
        "kidney_right",
        35.0,
        4.0,
        "right of the spine, lower than the left; cortex +12 HU,"
        " medulla -8 HU, unlabelled sinus fat at the hilum",
    ),
    Organ(4, "kidney_left", 35.0, 4.0, "left of the spine; same structure as the right kidney"),
    Organ(
        5,
        "stomach",
        20.0,
        5.0,
        "J-shaped, left upper abdomen; wall +25 HU, fluid -5 HU and"
        " an anterior gas cap (-980 HU) of varying size",
    ),
    Organ(
        6,
        "aorta",
        150.0,
        15.0,
        "contrast-filled lumen, left-anterior of the spine, from the"
        " top of the field of view down to the bifurcation at L4",
    ),
    Organ(
        7,
        "bladder",
        5.0,
        3.0,
        "low in the pelvis behind the pubis; urine inside a 35 HU wall, filling varies",
    ),
    Organ(
        8,
        "vertebra_L1",
        500.0,
        0.0,
        "the whole first lumbar vertebra: body (700 HU cortex, 340-440 HU cancellous) and arch",
    ),
    Organ(9, "gallbladder", 8.0, 3.0, "bile, under the inferior surface of the liver"),
    Organ(10, "pancreas", 40.0, 5.0, "head near the duodenum, tail toward the splenic hilum"),
)
ORGAN_NAMES: dict[int, str] = {o.label: o.name for o in ORGANS}

#: Default nominal grid ``(NX, NY, NZ)``: in-plane voxels exactly, slices about NZ (+-20 %).
DEFAULT_SHAPE = (128, 128, 100)


@dataclass(frozen=True)
class Phantom:
    """One subject on a RAS-aligned grid.

    Attributes:
        image: ``(I, J, K)`` int16 Hounsfield units; i runs toward Right, j Anterior, k Superior.
        label: ``(I, J, K)`` uint8 organ ids (:data:`ORGANS`) on the same grid.
        affine: ``(4, 4)`` voxel -> world RAS+ mm.
        info: what was drawn (spacing, noise, body size...), for logs and manifests.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)


def _organ_hu(rng: np.random.Generator) -> dict[str, float]:
    return {o.name: o.hu + (rng.normal(0.0, o.hu_sd) if o.hu_sd else 0.0) for o in ORGANS}


def _grid(rng: np.random.Generator, body: Body, shape: Sequence[int]) -> Grid:
    """Choose spacing, in-plane position and the rendered z range, and warp the coordinates."""
    nx, ny, nz = (int(s) for s in shape)
    a_max = body.A * 1.08 + body.fat + body.wall
    b_max = body.B * 1.06 + body.fat + body.wall
    fov = 2.0 * max(a_max, b_max * nx / ny) * rng.uniform(1.06, 1.2)
    d_xy = fov / min(nx, ny)
    dz = 400.0 * body.sz / nz * rng.uniform(0.88, 1.12)
    slack_x, slack_y = nx * d_xy / 2.0 - a_max, ny * d_xy / 2.0 - b_max
    off_x = rng.uniform(-0.5, 0.5) * max(slack_x, 0.0)
    off_y = rng.uniform(-0.5, 0.5) * max(slack_y, 0.0)
    z_lo, z_hi = -335.0 * body.sz, body.apex_r + 80.0 * body.sz
    n_render = int(np.ceil((z_hi - z_lo) / dz)) + 1
    spacing = np.array([d_xy, d_xy, dz])
    origin = np.array([-(nx - 1) / 2.0 * d_xy - off_x, -(ny - 1) / 2.0 * d_xy - off_y, z_lo])
    return Grid.build(rng, (nx, ny, n_render), spacing, origin, warp_mm=rng.uniform(2.0, 5.0))


def _field_of_view(
    rng: np.random.Generator, label: np.ndarray, dz: float, role: str, vessel: int
) -> tuple[int, int]:
    """Slices ``[k0, k1)`` to keep: margins above/below the organs (queries may cut a little).

    The labelled ``vessel`` (the aorta) runs through the whole body axis and is ignored here.
    """
    ks = np.nonzero(((label > 0) & (label != vessel)).any(axis=(0, 1)))[0]
    lo, hi = int(ks[0]), int(ks[-1])
    if role == "support":
        top, bottom = rng.uniform(5.0, 60.0), rng.uniform(5.0, 40.0)
    else:
        top, bottom = rng.uniform(-12.0, 50.0), rng.uniform(-12.0, 35.0)
    k0 = max(0, lo - int(round(bottom / dz)))
    k1 = min(label.shape[2], hi + 1 + int(round(top / dz)))
    return k0, k1


def make_phantom(
    rng: np.random.Generator,
    shape: Sequence[int] = DEFAULT_SHAPE,
    role: str = "support",
) -> Phantom:
    """Draw one random subject.

    Args:
        rng: the only source of randomness; the same generator state gives the same subject.
        shape: nominal grid ``(NX, NY, NZ)``: the in-plane size is exact, the number of slices
            follows the subject's height and field of view (roughly NZ +- 20 %). Spacing is
            chosen to fit: about 3 mm in plane and 4 mm between slices for the default.
        role: ``"support"`` keeps every organ whole with a margin above and below;
            ``"query"`` may cut up to 12 mm off the highest and lowest organs.

    Returns:
        A :class:`Phantom` on a RAS grid (reorient it with :func:`medlsam.synth.cohort.reorient`).
    """
    if role not in ("support", "query"):
        raise InputError(f"role {role!r}: expected 'support' or 'query'")
    if len(shape) != 3 or min(shape) < 16:
        raise InputError(f"shape {tuple(shape)}: expected three sizes, each >= 16")
    body = Body.random(rng)
    hu = _organ_hu(rng)
    ids = {o.name: o.label for o in ORGANS}
    grid = _grid(rng, body, shape)
    texture = smooth_field(rng, grid.shape, grid.spacing, 4.5)
    canvas = Canvas(grid, texture)
    inside, cavity = organs.draw_wall(canvas, body, rng)
    dome = organs.diaphragm_height(canvas, body)
    abdomen = organs.draw_viscera_background(
        canvas, cavity, dome, smooth_field(rng, grid.shape, grid.spacing, 14.0)
    )
    organs.draw_thorax(canvas, body, rng, cavity, dome)
    organs.draw_muscles(canvas, body, rng, inside)
    organs.draw_colon(canvas, body, rng, abdomen)
    organs.draw_organs(canvas, body, rng, abdomen, ids, hu)
    organs.draw_vessels(canvas, body, rng, ids, hu, inside)
    organs.draw_bladder(canvas, body, rng, ids["bladder"], hu["bladder"], abdomen)
    skeleton.draw_spine(canvas, body, rng, ids["vertebra_L1"])
    skeleton.draw_ribs(canvas, body, rng)
    skeleton.draw_pelvis(canvas, body, rng)

    k0, k1 = _field_of_view(rng, canvas.label, grid.spacing[2], role, ids["aorta"])
    image = canvas.image[:, :, k0:k1]
    label = np.ascontiguousarray(canvas.label[:, :, k0:k1])
    image = ndimage.gaussian_filter(image, sigma=(0.45, 0.45, 0.3))
    noise_sd = rng.uniform(6.0, 18.0)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_sd)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    table = rng.uniform([-15.0, -40.0, -500.0], [15.0, 40.0, 100.0])
    affine = grid.affine
    affine[:3, 3] = grid.origin + np.array([0.0, 0.0, k0 * grid.spacing[2]]) + table
    info = {
        "role": role,
        "shape": tuple(int(s) for s in image.shape),
        "spacing": tuple(round(float(s), 3) for s in grid.spacing),
        "noise_sd": round(float(noise_sd), 1),
        "cavity_mm": (round(2 * body.A), round(2 * body.B)),
        "fat_mm": round(body.fat, 1),
    }
    logger.debug("phantom %s", info)
    return Phantom(image=image, label=label, affine=affine, info=info)
