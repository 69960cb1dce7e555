"""Localization (MedLAM): where each organ lies in a query scan.

``network`` (the MedLAM network and its checkpoints), ``matching`` (feature matching of
landmarks), ``prototypes`` (per-class landmark prototypes from the support scans) and
``localizer`` (``Localizer``: fit on supports, predict 3D boxes on a query).
"""
