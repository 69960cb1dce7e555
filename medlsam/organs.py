"""Organ names as other tools spell them: TotalSegmentator-style file names and SNOMED CT codes.

Configs name organs freely (``kidney_l``, ``bladder``, ``opt_nerve_r``). Outputs meant for other
tools use one spelling: :func:`organ_file_name` gives TotalSegmentator's style (lower case,
``_left``/``_right`` at the end: ``kidney_left``, ``urinary_bladder``), and :func:`sct_keyword`
names the SNOMED CT concept of pydicom's code dictionary (``pydicom.sr.codedict.codes.SCT``)
for DICOM-SEG, where one is known. Laterality is kept in the name, not in the code.
"""

from __future__ import annotations

import re

#: Spellings found in configs -> TotalSegmentator-style base names (side removed).
_ALIASES: dict[str, str] = {
    "bladder": "urinary_bladder",
    "intestine": "small_bowel",
    "small_intestine": "small_bowel",
    "adrenal": "adrenal_gland",
    "opt_nerve": "optic_nerve",
    "opt_chiasma": "optic_chiasm",
    "optic_chiasma": "optic_chiasm",
    "mid_ear": "middle_ear",
    "tm_joint": "temporomandibular_joint",
    "pituitary": "pituitary_gland",
    "parotid": "parotid_gland",
    "brain_stem": "brainstem",
    "ivc": "inferior_vena_cava",
    "large_intestine": "colon",
    "femur_head": "head_of_femur",
}

#: TotalSegmentator-style base names -> keyword of pydicom's SNOMED CT code dictionary.
_SCT: dict[str, str] = {
    "liver": "Liver",
    "spleen": "Spleen",
    "kidney": "Kidney",
    "stomach": "Stomach",
    "aorta": "Aorta",
    "urinary_bladder": "Bladder",
    "gallbladder": "Gallbladder",
    "pancreas": "Pancreas",
    "esophagus": "Esophagus",
    "duodenum": "Duodenum",
    "colon": "Colon",
    "small_bowel": "SmallIntestine",
    "adrenal_gland": "AdrenalGland",
    "rectum": "Rectum",
    "head_of_femur": "HeadOfFemur",
    "femur": "Femur",
    "heart": "Heart",
    "lung": "Lung",
    "trachea": "Trachea",
    "inferior_vena_cava": "InferiorVenaCava",
    "prostate": "Prostate",
    "sacrum": "Sacrum",
    "spine": "Spine",
    "brain": "Brain",
    "brainstem": "BrainStem",
    "optic_chiasm": "OpticChiasm",
    "optic_nerve": "OpticNerve",
    "mandible": "Mandible",
    "parotid_gland": "ParotidGland",
    "eye": "Eye",
    "lens": "Lens",
    "spinal_cord": "SpinalCord",
    "temporal_lobe": "TemporalLobe",
    "temporomandibular_joint": "TemporomandibularJoint",
    "inner_ear": "InnerEar",
    "middle_ear": "MiddleEar",
}

_SIDES = {"l": "left", "left": "left", "r": "right", "right": "right"}


def _split(name: str) -> tuple[str, str | None]:
    """(base, side) of a normalised name: ``kidney_l`` -> (``kidney``, ``left``)."""
    words = name.split("_")
    if len(words) > 1 and words[-1] in _SIDES:
        return "_".join(words[:-1]), _SIDES[words[-1]]
    if len(words) > 1 and words[0] in ("left", "right"):
        return "_".join(words[1:]), words[0]
    return name, None


def organ_file_name(name: str) -> str:
    """A TotalSegmentator-style file stem for an organ name.

    >>> organ_file_name("kidney_L"), organ_file_name("Bladder"), organ_file_name("opt_nerve_r")
    ('kidney_left', 'urinary_bladder', 'optic_nerve_right')
    """
    text = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_") or "organ"
    base, side = _split(text)
    base = _ALIASES.get(base, base)
    vertebra = re.fullmatch(r"vertebra_?([cltsCLTS]\d+)", base)
    if vertebra:  # TotalSegmentator: vertebrae_L1
        base = f"vertebrae_{vertebra.group(1).upper()}"
    return f"{base}_{side}" if side else base


def sct_keyword(name: str) -> str | None:
    """Keyword of the SNOMED CT concept for an organ name in pydicom's dictionary, or None."""
    base, _ = _split(organ_file_name(name))
    if base.startswith("vertebrae_"):
        return None
    return _SCT.get(base)
