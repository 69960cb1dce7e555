"""MedLAM through a CPU inference engine (:mod:`medlsam.engine`), called like the network.

:class:`EngineMedLAM` wraps a float32 CPU :class:`MedLAM`: ``engine_model(x, fc=..., features=...)``
returns the same dict as ``model(x, fc=..., features=...)``. Each combination of outputs that is
asked for (fc-only start patches, fc + features for supports, features only for refinement)
is exported once as its own graph, which stops the decoder where the network itself would.
Inputs that the graphs are not built for (not 64^3, not float32 on the CPU) run the network.
"""

from __future__ import annotations

import torch
from torch import nn

from medlsam.engine import Graph, compiled_graph, resolve_engine, state_sha256
from medlsam.export_cache import ExportCache
from medlsam.localization.network import FEATURE_NAMES, PATCH_SIZE, MedLAM


class _Outputs(nn.Module):
    """The network returning a tuple of the requested outputs, for export."""

    def __init__(self, net: MedLAM, fc: bool, features: tuple[str, ...]) -> None:
        super().__init__()
        self.net, self.fc, self.features = net, fc, features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x, fc=self.fc, features=self.features)
        return tuple(out[k] for k in _names(self.fc, self.features))


def _names(fc: bool, features: tuple[str, ...]) -> list[str]:
    return (["fc_position"] if fc else []) + list(features)


def _ordered(features) -> tuple[str, ...]:
    """The requested feature scales in the network's order (names it lacks left out)."""
    wanted = set(features)
    return tuple(n for n in FEATURE_NAMES if n in wanted)


class EngineMedLAM:
    """A MedLAM whose CPU forward passes run in ``engine`` (``onnxruntime`` or ``openvino``).

    Attributes ``base_chns``, ``checkpoint_sha256`` and ``state_dict`` are the network's, so
    prototypes and records name the same weights.
    """

    def __init__(self, model: MedLAM, engine: str, cache: ExportCache | None = None) -> None:
        self.model = model
        self.engine = engine
        self.cache = cache
        self._graphs: dict[tuple[bool, tuple[str, ...]], Graph] = {}
        self._sha: str | None = None

    def __getattr__(self, name: str):  # base_chns, checkpoint_sha256, state_dict, ...
        return getattr(self.__dict__["model"], name)

    def graph(self, fc: bool, features: tuple[str, ...]) -> Graph:
        """The exported graph for these outputs (exported on first use, then cached)."""
        key = (fc, features)
        if key not in self._graphs:
            if self._sha is None:
                self._sha = state_sha256(self.model)
            tag = ("fc" if fc else "") + "".join(f[-1] for f in features)
            example = torch.zeros(1, 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
            self._graphs[key] = compiled_graph(
                self.engine,
                _Outputs(self.model, fc, features).eval(),
                example,
                f"medlam{self.model.base_chns}-{tag}",
                _names(fc, features),
                self._sha,
                cache=self.cache,
            )
        return self._graphs[key]

    def prepare(self, features: tuple[str, ...]) -> None:
        """Export and load, ahead of use, the three graphs a :class:`Localizer` with these
        feature scales runs (fc-only, fc + features, features only)."""
        ordered = _ordered(features)
        for fc, feats in ((True, ()), (True, ordered), (False, ordered)):
            if fc or feats:
                self.graph(fc, feats)

    def __call__(self, x: torch.Tensor, fc: bool = True, features=FEATURE_NAMES):
        return self.forward(x, fc=fc, features=features)

    def forward(
        self, x: torch.Tensor, fc: bool = True, features=FEATURE_NAMES
    ) -> dict[str, torch.Tensor]:
        """Same arguments and outputs as :meth:`MedLAM.forward`."""
        ordered = _ordered(features)
        runnable = (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and tuple(x.shape[1:]) == (1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
            and len(ordered) == len(set(features))
            and (fc or ordered)
        )
        if not runnable:
            return self.model(x, fc=fc, features=features)
        outs = self.graph(fc, ordered)(x.numpy())
        return {n: torch.from_numpy(o) for n, o in zip(_names(fc, ordered), outs)}


def with_engine(
    model: MedLAM, engine: str, device: str | torch.device, cache: ExportCache | None = None
) -> MedLAM | EngineMedLAM:
    """``model`` as ``[run] engine`` runs it on ``device``: the network itself for PyTorch (and
    always on CUDA), else an :class:`EngineMedLAM`."""
    chosen = resolve_engine(engine, device)
    return model if chosen == "torch" else EngineMedLAM(model, chosen, cache)
