"""medlsam: localize and segment organs in 3D CT with a handful of annotated support scans."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
