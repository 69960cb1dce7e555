"""The case loop that joins the stages: localize, segment, assemble, write, record.

``run`` (``run`` and ``run_case``), ``setup`` (building the stages from a config), ``loop``
(cases one by one, errors kept per case), ``outputs`` (masks and boxes written atomically),
``overlays`` (PNG previews), ``record`` (``run.json``), ``shard`` (``--shard`` and torchrun).
"""
