"""Localization: where each organ lies in a query scan (MedLAM, or registration without weights).

``network`` (the MedLAM network and its checkpoints), ``matching`` (feature matching of
landmarks), ``prototypes`` (per-class landmark prototypes from the support scans) and
``localizer`` (``Localizer``: fit on supports, predict 3D boxes on a query) and
``registration`` (``RegistrationLocalizer``: the same interface, each support scan registered
to the query with SimpleITK; ``[localize] method = registration``).
"""
