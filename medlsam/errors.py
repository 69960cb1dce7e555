"""Exceptions raised by medlsam.

Every error is meant to be shown to a user as one line: it names the file (or key,
or organ), the value found and what was expected. The command-line tools catch
:class:`MedlsamError` and print ``str(err)`` without a traceback.
"""

from __future__ import annotations


class MedlsamError(Exception):
    """Base class of every error medlsam reports to a user."""

    exit_code = 2


class ConfigError(MedlsamError):
    """A configuration file or one of its list files is wrong."""

    exit_code = 2


class InputError(MedlsamError):
    """An image or label file cannot be used (missing, corrupt, not CT, wrong geometry...)."""

    exit_code = 3


class CheckpointError(MedlsamError):
    """A model checkpoint is missing, corrupt or does not fit the network."""

    exit_code = 4


class OutputError(MedlsamError):
    """An output cannot be written (unwritable folder, full disk...)."""

    exit_code = 5


class RegistrationError(InputError):
    """Registering a support scan to a query failed or did not converge (the case fails)."""
