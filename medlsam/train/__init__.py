"""Training the MedLAM network: ``config`` (training options), ``data`` (patch pairs),
``losses`` and ``trainer`` (the training loop and its checkpoints)."""
