"""Drawing primitives for the procedural phantom.

Everything is drawn on a :class:`Grid`: a voxel grid whose axes run along world x, y and z
(RAS+ millimetres: x toward the patient's Right, y toward Anterior, z toward Superior), with
voxel ``(i, j, k)`` centred at ``origin + (i, j, k) * spacing``. Shapes are tested against
*warped* world coordinates (the voxel centres plus one smooth random displacement field), so
every structure of a subject is bent by the same deformation and stays anatomically consistent.

Shapes are evaluated only inside their bounding block, which keeps a subject fast to draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Block = tuple[slice, slice, slice]


def resize_field(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resize of a small ``(a, b, c)`` float array to ``shape`` (corners aligned).

    Separable linear interpolation, one axis at a time (much faster than ``ndimage.zoom``).
    """
    out = np.asarray(coarse, np.float32)
    for axis, n_out in enumerate(shape):
        n_in = out.shape[axis]
        pos = np.linspace(0.0, n_in - 1.0, int(n_out))
        i0 = (
            np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
            if n_in > 1
            else np.zeros(int(n_out), np.intp)
        )
        w = (pos - i0).astype(np.float32) if n_in > 1 else np.zeros(int(n_out), np.float32)
        view = [1, 1, 1]
        view[axis] = int(n_out)
        w = w.reshape(view)
        lo = np.take(out, i0, axis=axis)
        hi = np.take(out, np.minimum(i0 + 1, n_in - 1), axis=axis)
        out = lo + (hi - lo) * w
    return np.ascontiguousarray(out, dtype=np.float32)


def smooth_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], scale_mm: float
) -> np.ndarray:
    """A smooth random field of shape ``shape`` (float32, mean ~0, std ~1).

    ``scale_mm`` is the correlation length: random values on a coarse lattice of that pitch,
    smoothed a little and resized trilinearly to the full grid.
    """
    coarse = [max(2, int(np.ceil(n * d / scale_mm)) + 2) for n, d in zip(shape, spacing)]
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), 0.7, mode="wrap")
    noise = (noise - noise.mean()) / (noise.std() + 1e-6)
    return resize_field(noise, shape)


@dataclass
class Grid:
    """A RAS-aligned voxel grid with warped world coordinates.

    Attributes:
        shape: ``(I, J, K)`` voxels along world x, y, z.
        spacing: ``(3,)`` mm.
        origin: ``(3,)`` world RAS mm of voxel ``(0, 0, 0)``.
        x, y, z: ``(I, J, K)`` float32 warped world coordinates (mm) of every voxel centre.
        margin: the largest displacement (mm); bounding blocks are widened by it.
    """

    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    margin: float

    @classmethod
    def build(
        cls,
        rng: np.random.Generator,
        shape: tuple[int, int, int],
        spacing: np.ndarray,
        origin: np.ndarray,
        warp_mm: float,
        warp_scale_mm: float = 70.0,
    ) -> Grid:
        """Voxel centres displaced by a smooth random field of about ``warp_mm`` amplitude."""
        axes = [origin[a] + spacing[a] * np.arange(shape[a], dtype=np.float32) for a in range(3)]
        coords = []
        for a in range(3):
            field = smooth_field(rng, shape, spacing, warp_scale_mm) * np.float32(warp_mm)
            view = [1, 1, 1]
            view[a] = shape[a]
            coords.append(field + axes[a].reshape(view).astype(np.float32))
        margin = 3.0 * warp_mm + float(spacing.max())
        return cls(shape, np.asarray(spacing, float), np.asarray(origin, float), *coords, margin)

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` voxel -> world RAS mm (unwarped: the warp bends anatomy, not the grid)."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def axis_mm(self, axis: int) -> np.ndarray:
        """Unwarped world coordinates (mm) of the voxel centres along one axis, ``(N,)``."""
        return self.origin[axis] + self.spacing[axis] * np.arange(self.shape[axis])

    def block(self, lo: Sequence[float], hi: Sequence[float]) -> Block | None:
        """Index slices covering the world box ``[lo, hi]`` (mm) plus the warp margin."""
        slices = []
        for a in range(3):
            start = int(np.floor((lo[a] - self.margin - self.origin[a]) / self.spacing[a]))
            stop = int(np.ceil((hi[a] + self.margin - self.origin[a]) / self.spacing[a])) + 1
            start, stop = max(start, 0), min(stop, self.shape[a])
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)  # type: ignore[return-value]

    def coords(self, block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Warped world coordinates inside a block, three arrays of the block's shape."""
        return self.x[block], self.y[block], self.z[block]


def rotation(rng: np.random.Generator, degrees: Sequence[float]) -> np.ndarray:
    """A ``(3, 3)`` rotation by random angles within ``±degrees`` about x, y and z."""
    ax, ay, az = (np.deg2rad(rng.uniform(-d, d)) for d in degrees)
    return euler(ax, ay, az)


def euler(ax: float, ay: float, az: float) -> np.ndarray:
    """``(3, 3)`` rotation ``Rz @ Ry @ Rx`` for angles in radians about x, y, z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Blob:
    """A smoothly deformed ellipsoid.

    A point ``p`` (world mm) is inside when ``|q| < 1 + sum_k a_k sin(w_k . q + phi_k)`` with
    ``q = R^T (p - center) / radii`` (the ellipsoid's own unit frame). The few low-frequency
    waves make each organ lumpy in its own way.

    Attributes:
        center: ``(3,)`` mm. radii: ``(3,)`` mm along the ellipsoid's own axes.
        rot: ``(3, 3)``, columns are the ellipsoid axes in world coordinates.
        waves: ``(K, 3)`` wave vectors; phases ``(K,)``; amps ``(K,)`` (fractions of the radius).
    """

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    waves: np.ndarray
    phases: np.ndarray
    amps: np.ndarray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        center: Sequence[float],
        radii: Sequence[float],
        rot: np.ndarray | None = None,
        bumpiness: float = 0.08,
        waves: int = 3,
    ) -> Blob:
        dirs = rng.standard_normal((waves, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        freqs = rng.uniform(1.5, 3.0, size=(waves, 1))
        return cls(
            center=np.asarray(center, float),
            radii=np.asarray(radii, float),
            rot=np.eye(3) if rot is None else np.asarray(rot, float),
            waves=dirs * freqs,
            phases=rng.uniform(0, 2 * np.pi, waves),
            amps=rng.uniform(0.3, 1.0, waves) * bumpiness / max(1, waves) * 2,
        )

    def scaled(self, factor: float) -> Blob:
        """The same blob with radii multiplied by ``factor`` (same bumps)."""
        return Blob(self.center, self.radii * factor, self.rot, self.waves, self.phases, self.amps)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box ``(lo, hi)`` (mm) that certainly contains the blob."""
        reach = self.radii.max() * (1.0 + float(np.abs(self.amps).sum()))
        return self.center - reach, self.center + reach

    def inside(self, grid: Grid, block: Block) -> np.ndarray:
        """Boolean mask of the blob inside ``block``."""
        x, y, z = grid.coords(block)
        inv = (self.rot / self.radii[None, :]).T.astype(np.float32)  # world -> unit frame
        dx, dy, dz = (
            x - np.float32(self.center[0]),
            y - np.float32(self.center[1]),
            z - np.float32(self.center[2]),
        )
        q = [inv[r, 0] * dx + inv[r, 1] * dy + inv[r, 2] * dz for r in range(3)]
        level = np.float32(1.0)
        for w, ph, a in zip(self.waves, self.phases, self.amps):
            level = level + np.float32(a) * np.sin(
                np.float32(w[0]) * q[0]
                + np.float32(w[1]) * q[1]
                + np.float32(w[2]) * q[2]
                + np.float32(ph)
            )
        return q[0] * q[0] + q[1] * q[1] + q[2] * q[2] < level * level


@dataclass(frozen=True)
class Tube:
    """A tube along z: at height ``z`` its axial cross-section is an ellipse.

    Attributes:
        z: ``(M,)`` increasing control heights (mm); the tube exists between the first and last.
        cx, cy: ``(M,)`` centre of the cross-section at each control height (mm).
        rx, ry: ``(M,)`` half-axes (mm) at each control height; linear in between.
    """

    z: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    rx: np.ndarray
    ry: np.ndarray

    @classmethod
    def from_points(cls, points: Sequence[Sequence[float]]) -> Tube:
        """From rows ``(z, cx, cy, rx, ry)``, sorted by z."""
        arr = np.asarray(sorted(points, key=lambda p: p[0]), float)
        return cls(*arr.T)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([(self.cx - self.rx).min(), (self.cy - self.ry).min(), self.z[0]])
        hi = np.array([(self.cx + self.rx).max(), (self.cy + self.ry).max(), self.z[-1]])
        return lo, hi

    def inside(self, grid: Grid, block: Block) -> np.ndarray:
        x, y, z = grid.coords(block)
        zc = np.clip(z, self.z[0], self.z[-1])
        cx, cy = np.interp(zc, self.z, self.cx), np.interp(zc, self.z, self.cy)
        rx, ry = np.interp(zc, self.z, self.rx), np.interp(zc, self.z, self.ry)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1.0
        return inside & (z >= self.z[0]) & (z <= self.z[-1])


def chain(
    rng: np.random.Generator,
    points: Sequence[Sequence[float]],
    radii: Sequence[Sequence[float]],
    steps: int = 3,
    bumpiness: float = 0.06,
) -> list[Blob]:
    """Overlapping blobs along a polyline (a bent organ such as the stomach or pancreas).

    ``points`` ``(M, 3)`` mm and ``radii`` ``(M, 3)`` mm are interpolated with ``steps`` blobs
    per segment.
    """
    pts, rad = np.asarray(points, float), np.asarray(radii, float)
    blobs = []
    for m in range(len(pts) - 1):
        for t in np.linspace(0.0, 1.0, steps, endpoint=m == len(pts) - 2):
            c = pts[m] * (1 - t) + pts[m + 1] * t
            r = rad[m] * (1 - t) + rad[m + 1] * t
            blobs.append(Blob.random(rng, c, r, bumpiness=bumpiness, waves=2))
    return blobs


class Canvas:
    """The image and label being painted: later strokes cover earlier ones.

    Attributes:
        image: ``(I, J, K)`` float32 HU. label: ``(I, J, K)`` uint8 class ids.
        texture: ``(I, J, K)`` float32 smooth field (std ~1) giving organs their grain.
    """

    def __init__(self, grid: Grid, texture: np.ndarray, background: float = -1000.0):
        self.grid = grid
        self.image = np.full(grid.shape, background, np.float32)
        self.label = np.zeros(grid.shape, np.uint8)
        self.texture = texture

    def paint(
        self,
        block: Block | None,
        mask: np.ndarray,
        hu: float,
        label: int = 0,
        grain: float = 0.0,
    ) -> None:
        """Set ``hu`` (+ ``grain`` x texture) and ``label`` where ``mask`` is true in ``block``."""
        if block is None or not mask.any():
            return
        img, lab = self.image[block], self.label[block]
        if grain:
            img[mask] = np.float32(hu) + np.float32(grain) * self.texture[block][mask]
        else:
            img[mask] = np.float32(hu)
        lab[mask] = label

    def shape_mask(
        self, shape: Blob | Tube, clip: np.ndarray | None = None
    ) -> tuple[Block | None, np.ndarray]:
        """``(block, mask)`` of a shape, optionally and-ed with a full-volume ``clip`` mask."""
        block = self.grid.block(*shape.bounds())
        if block is None:
            return None, np.zeros((0, 0, 0), bool)
        mask = shape.inside(self.grid, block)
        if clip is not None:
            mask &= clip[block]
        return block, mask

    def union_mask(
        self, shapes: Sequence[Blob | Tube], clip: np.ndarray | None = None
    ) -> np.ndarray:
        """Full-volume ``(I, J, K)`` bool mask of the union of ``shapes`` (and-ed with ``clip``)."""
        out = np.zeros(self.grid.shape, bool)
        for shape in shapes:
            block, mask = self.shape_mask(shape, clip)
            if block is not None:
                out[block] |= mask
        return out

    def draw(
        self,
        shapes: Blob | Tube | Sequence[Blob | Tube],
        hu: float,
        label: int = 0,
        grain: float = 0.0,
        clip: np.ndarray | None = None,
    ) -> None:
        """Paint the union of ``shapes`` (each clipped by ``clip``)."""
        for shape in [shapes] if isinstance(shapes, (Blob, Tube)) else shapes:
            block, mask = self.shape_mask(shape, clip)
            self.paint(block, mask, hu, label, grain)
