"""Synthetic CT cohorts for demos, tests and training: ``python -m medlsam.synth``.

Two sources, one output layout (see :mod:`medlsam.synth.cohort`):

* :func:`make_cohort`: procedural abdominal CT phantoms (:func:`make_phantom`), numpy/scipy
  only. Every subject has the same ten labelled organs in the same relative places
  (:data:`ORGANS`); the seed varies body size and shape, organ size, shape and position, the
  field of view along the body axis, voxel spacing, noise and the axis orientation on disk.
* :func:`make_cohort_from`: random affine + elastic deformations of one real CT and its label
  map (MONAI transforms), with field-of-view crops and intensity changes.

Label ids of the phantom (:data:`ORGANS`): 1 liver, 2 spleen, 3 kidney_right, 4 kidney_left,
5 stomach, 6 aorta, 7 bladder, 8 vertebra_L1, 9 gallbladder, 10 pancreas.
"""

from __future__ import annotations

from medlsam.synth.cohort import (
    DEFAULT_ORIENTATIONS,
    Cohort,
    Subject,
    make_cohort,
    reorient,
)
from medlsam.synth.deform import make_cohort_from
from medlsam.synth.phantom import DEFAULT_SHAPE, ORGAN_NAMES, ORGANS, Organ, Phantom, make_phantom

__all__ = [
    "DEFAULT_ORIENTATIONS",
    "DEFAULT_SHAPE",
    "ORGANS",
    "ORGAN_NAMES",
    "Cohort",
    "Organ",
    "Phantom",
    "Subject",
    "make_cohort",
    "make_cohort_from",
    "make_phantom",
    "reorient",
]
