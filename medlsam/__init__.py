"""medlsam: localize and segment organs in 3D CT with a handful of annotated support scans.

The Python API (:mod:`medlsam.api`): :func:`load_config`, :func:`infer`, :func:`localize`,
:func:`evaluate`. Heavy modules (torch, the networks) load on the first call, not on import.
"""

from __future__ import annotations

__version__ = "0.1.0"

from medlsam.api import evaluate, infer, load_config, localize  # noqa: E402

__all__ = ["__version__", "evaluate", "infer", "load_config", "localize"]
