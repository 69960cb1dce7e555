"""The subject's body plan: size, proportions and the landmarks that place every structure.

Coordinates here are the *body frame*: RAS+ millimetres (x toward the patient's Right, y toward
Anterior, z toward Superior) with the origin on the body axis at the centre of the first lumbar
vertebral body (L1). The template anatomy is written for a reference adult whose abdominal
cavity is 270 mm wide and 184 mm deep; :meth:`Body.at` scales template positions to a subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Template cavity half-width and half-depth at L1 (mm).
TEMPLATE_A = 135.0
TEMPLATE_B = 92.0
#: Template height of one vertebral level, body + disc (mm).
TEMPLATE_LEVEL = 34.0
#: Vertebral levels by index: 0 is L1, negative below (L2..L5), positive above (T12..T7).
LEVEL_NAMES = {
    -4: "L5",
    -3: "L4",
    -2: "L3",
    -1: "L2",
    0: "L1",
    1: "T12",
    2: "T11",
    3: "T10",
    4: "T9",
    5: "T8",
    6: "T7",
}


def _sigmoid(t: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-t))


@dataclass(frozen=True)
class Body:
    """Random proportions of one subject (all lengths in mm).

    Attributes:
        A, B: half-width and half-depth of the abdominal cavity at L1.
        fat: subcutaneous fat thickness. wall: abdominal wall muscle thickness.
        sz: craniocaudal scale (1 = template). organ: common organ size factor.
        apex_r, apex_l: heights of the right and left diaphragm domes.
    """

    A: float
    B: float
    fat: float
    wall: float
    sz: float
    organ: float
    apex_r: float
    apex_l: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Body:
        build = rng.uniform(-1.0, 1.0)  # slim .. broad, correlates width, depth and fat
        A = TEMPLATE_A * (1.0 + 0.09 * build + rng.uniform(-0.04, 0.04))
        B = TEMPLATE_B * (1.0 + 0.09 * build + rng.uniform(-0.05, 0.05))
        fat = float(np.clip(21.0 + 10.0 * build + rng.normal(0.0, 3.0), 6.0, 40.0))
        sz = rng.uniform(0.9, 1.1)
        return cls(
            A=A,
            B=B,
            fat=fat,
            wall=rng.uniform(8.0, 14.0),
            sz=sz,
            organ=rng.uniform(0.88, 1.12),
            apex_r=(100.0 + rng.normal(0.0, 6.0)) * sz,
            apex_l=(88.0 + rng.normal(0.0, 6.0)) * sz,
        )

    @property
    def sx(self) -> float:
        return self.A / TEMPLATE_A

    @property
    def sy(self) -> float:
        return self.B / TEMPLATE_B

    @property
    def level(self) -> float:
        """Height of one vertebral level (mm)."""
        return TEMPLATE_LEVEL * self.sz

    def at(self, x: float, y: float, z: float) -> np.ndarray:
        """Template position -> this subject's body frame, ``(3,)`` mm."""
        return np.array([x * self.sx, y * self.sy, z * self.sz])

    def radii(self, rx: float, ry: float, rz: float) -> np.ndarray:
        """Template organ half-axes -> this subject's, ``(3,)`` mm."""
        return np.array([rx * self.sx, ry * self.sy, rz * self.sz]) * self.organ

    def cavity_axes(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Half-width and half-depth of the cavity at heights ``z`` (mm, any shape)."""
        zt = z / self.sz
        fa = 1.0 + 0.07 * _sigmoid((-zt - 170.0) / 18.0) - 0.02 * _sigmoid((zt - 110.0) / 20.0)
        fb = 1.0 + 0.05 * np.exp(-(((zt + 60.0) / 80.0) ** 2))
        return self.A * fa, self.B * fb

    def spine_y(self, z: np.ndarray | float) -> np.ndarray | float:
        """Antero-posterior position of the vertebral body centres at height ``z`` (lordosis)."""
        zt = np.asarray(z) / self.sz
        return self.sy * (-52.0 + 9.0 * np.exp(-(((zt + 85.0) / 80.0) ** 2)))

    def dome(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the diaphragm above ``(x, y)``: two domes, the right one higher.

        Lung lies above it; liver, spleen and stomach below it.
        """
        right = self.apex_r - 60.0 * self.sz * (
            ((x - 62.0 * self.sx) / (85.0 * self.sx)) ** 2
            + ((y + 5.0 * self.sy) / (95.0 * self.sy)) ** 2
        )
        left = self.apex_l - 60.0 * self.sz * (
            ((x + 62.0 * self.sx) / (85.0 * self.sx)) ** 2
            + ((y + 5.0 * self.sy) / (95.0 * self.sy)) ** 2
        )
        return np.where(x > 0, right, left)

    def outline(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Half-width and half-depth of the skin outline at heights ``z``."""
        a, b = self.cavity_axes(z)
        pad = self.fat + self.wall
        return a + pad, b + pad
