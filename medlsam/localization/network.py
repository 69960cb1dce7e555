"""The MedLAM 3D localization network (method.md 2), its checkpoint format and loader.

The module tree and parameter names are those of the published network, so the published
``checkpoint/medlam.pth`` (a state dict whose 44 keys carry the ``module.`` prefix of
``torch.nn.DataParallel``, tensors possibly fp16) loads unchanged with strict key and shape
checks, and checkpoints written by :func:`save_medlam` load in the published code.

Shapes for one input patch ``(B, 1, 64, 64, 64)`` (3 mm voxels, ``(z, y, x)``) and base width
``b`` (published: 24):

* encoder ``conv0..conv4`` (two 3x3x3 conv + InstanceNorm + ReLU blocks per stage, max-pool 2
  between stages) down to the bottleneck ``(B, 16b, 4, 4, 4)``;
* ``fc_position``: ``(B, 3)`` float, the bottleneck flattened in C order through three linear
  layers with no activation between them (the RDR / UAM position code); needs exactly 64^3 input;
* ``feature0`` ``(B, 4b, 16, 16, 16)``, ``feature1`` ``(B, 4b, 32, 32, 32)``, ``feature2``
  ``(B, 4b, 64, 64, 64)``: decoder maps (the MSS features), not normalised;
* ``prob``: ``(B, 3, 64, 64, 64)`` sigmoid of a 1x1x1 conv on ``feature2`` (unused at inference,
  kept because it is in the checkpoint).

:meth:`MedLAM.forward` computes only what is asked for: the decoder stops at the finest
requested feature scale and is skipped entirely when only ``fc_position`` is wanted, which
matters on a CPU (the full-resolution decoder stage is about 80 % of the work).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from medlsam.checkpoint import describe, file_sha256, fit_problems, load_weights
from medlsam.errors import CheckpointError

logger = logging.getLogger(__name__)

#: Base width of the published network.
PUBLISHED_BASE_CHNS = 24
#: Patch edge (3 mm voxels) the position head is built for.
PATCH_SIZE = 64
FEATURE_NAMES: tuple[str, ...] = ("feature0", "feature1", "feature2")
#: Prefix of ``torch.nn.DataParallel`` in the published checkpoint keys.
PREFIX = "module."
#: Key whose shape gives the base width: ``[2 * b, 1, 3, 3, 3]``.
WIDTH_KEY = "conv0_1.model.conv1_1.Conv.weight"


class _Conv(nn.Module):
    """Holds the convolution at the attribute path ``Conv`` (published naming)."""

    def __init__(self, in_chns: int, out_chns: int) -> None:
        super().__init__()
        self.Conv = nn.Conv3d(in_chns, out_chns, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Conv(x)


class SingleConv3D(nn.Module):
    """Conv3d 3x3x3 (same padding, bias) -> InstanceNorm3d (no affine, no running stats) -> ReLU.

    Parameters live at ``model.conv1_1.Conv.{weight,bias}`` as in the published checkpoint.
    """

    def __init__(self, in_chns: int, out_chns: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            OrderedDict(
                conv1_1=_Conv(in_chns, out_chns),
                norm1_1=nn.InstanceNorm3d(out_chns),
                relu1_1=nn.ReLU(inplace=True),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _up(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


class MedLAM(nn.Module):
    """The published MedLAM network (``inc=1``, ``n_classes=3``, norm ``'in'``, patch 64^3).

    Args:
        base_chns: base width ``b`` (published 24; 2-4 for tests and demos).
        dropout: dropout after the bottleneck (0 at inference, as published).
    """

    def __init__(self, base_chns: int = PUBLISHED_BASE_CHNS, dropout: float = 0.0) -> None:
        super().__init__()
        if base_chns < 1:
            raise ValueError(f"base_chns must be positive, not {base_chns}")
        b = int(base_chns)
        self.base_chns = b
        self.feature_chns = 4 * b
        c0, c2, c3, c4 = 2 * b, 4 * b, 8 * b, 16 * b
        # registration order = published state-dict order
        self.conv0_1 = SingleConv3D(1, c0)
        self.conv0_2 = SingleConv3D(c0, c0)
        self.conv1_1 = SingleConv3D(c0, c0)
        self.conv1_2 = SingleConv3D(c0, c0)
        self.conv2_1 = SingleConv3D(c0, c0)
        self.conv2_2 = SingleConv3D(c0, c2)
        self.conv3_1 = SingleConv3D(c2, c2)
        self.conv3_2 = SingleConv3D(c2, c3)
        self.conv4_1 = SingleConv3D(c3, c3)
        self.conv4_2 = SingleConv3D(c3, c4)
        self.conv5_1 = SingleConv3D(c4 + c3, c3)
        self.conv5_2 = SingleConv3D(c3, c3)
        self.conv6_1 = SingleConv3D(c3 + c2, c2)
        self.conv6_2 = SingleConv3D(c2, c2)
        self.conv7_1 = SingleConv3D(c2 + c0, c2)
        self.conv7_2 = SingleConv3D(c2, c2)
        self.conv8_1 = SingleConv3D(c2 + c0, c2)
        self.conv8_2 = SingleConv3D(c2, c2)
        self.classification = nn.Sequential(nn.Conv3d(c2, 3, kernel_size=1), nn.Sigmoid())
        fc_inputs = (PATCH_SIZE**3 // 4096) * 16 * b
        self.fc1 = nn.Linear(fc_inputs, 8 * b)
        self.fc2 = nn.Linear(8 * b, 4 * b)
        self.fc3 = nn.Linear(4 * b, 3)
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.dropout = nn.Dropout(p=dropout)

    def forward(
        self,
        x: torch.Tensor,
        fc: bool = True,
        features: Iterable[str] = FEATURE_NAMES,
        classification: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run the parts of the network that the requested outputs need.

        Args:
            x: ``(B, 1, D, H, W)`` normalised image patches; ``D, H, W`` multiples of 16, and
                exactly 64 when ``fc`` is requested.
            fc: return ``fc_position`` ``(B, 3)``.
            features: names among ``feature0/1/2`` to return (see the module docstring).
            classification: return ``prob`` (needs the full decoder).

        Returns:
            dict with the requested keys only.
        """
        wanted = set(features)
        unknown = wanted - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown feature names {sorted(unknown)}; expected {FEATURE_NAMES}")
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected input of shape (B, 1, D, H, W), got {tuple(x.shape)}")
        if fc and tuple(x.shape[2:]) != (PATCH_SIZE,) * 3:
            raise ValueError(f"fc_position needs 64^3 patches, got {tuple(x.shape[2:])}")
        depth = (
            3 if classification else max((FEATURE_NAMES.index(n) + 1 for n in wanted), default=0)
        )
        out: dict[str, torch.Tensor] = {}
        conv0 = self.conv0_2(self.conv0_1(x))
        conv1 = self.conv1_2(self.conv1_1(self.pool(conv0)))
        conv2 = self.conv2_2(self.conv2_1(self.pool(conv1)))
        conv3 = self.conv3_2(self.conv3_1(self.pool(conv2)))
        bottom = self.dropout(self.conv4_2(self.conv4_1(self.pool(conv3))))
        if fc:
            flat = torch.flatten(bottom, 1)
            out["fc_position"] = self.fc3(self.fc2(self.fc1(flat)))
        if depth == 0:
            return out
        up = self.conv5_2(self.conv5_1(torch.cat([_up(bottom), conv3], 1)))
        up = self.conv6_2(self.conv6_1(torch.cat([_up(up), conv2], 1)))
        if "feature0" in wanted:
            out["feature0"] = up
        if depth >= 2:
            up = self.conv7_2(self.conv7_1(torch.cat([_up(up), conv1], 1)))
            if "feature1" in wanted:
                out["feature1"] = up
        if depth >= 3:
            up = self.conv8_2(self.conv8_1(torch.cat([_up(up), conv0], 1)))
            if "feature2" in wanted:
                out["feature2"] = up
            if classification:
                out["prob"] = self.classification(up)
        return out


def parameter_shapes(base_chns: int = PUBLISHED_BASE_CHNS) -> dict[str, tuple[int, ...]]:
    """Published state-dict keys (without ``module.``) and shapes, built without allocating.

    Uses the meta device, so the width-24 listing costs no memory.
    """
    with torch.device("meta"):
        model = MedLAM(base_chns)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def count_parameters(base_chns: int = PUBLISHED_BASE_CHNS) -> int:
    """Number of parameters of the network at ``base_chns`` (15,067,878 at 24), no allocation."""
    total = 0
    for shape in parameter_shapes(base_chns).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


# --------------------------------------------------------------------------------------------
# checkpoints


def weights_fingerprint(model: nn.Module) -> str:
    """Where the weights came from: the checkpoint's sha256 if known, else a digest of them.

    :func:`build_medlam` records the sha256 of the file it loaded as
    ``model.checkpoint_sha256``; a model built without a file is identified by a sha256 of its
    parameters (fp32 bytes, in state-dict order).
    """
    known = getattr(model, "checkpoint_sha256", None)
    if known:
        return str(known)
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "weights:" + digest.hexdigest()


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path}: holds {type(obj).__name__}, expected a MedLAM state dict "
            "(or a training file with a 'state_dict' entry)"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise CheckpointError(f"{path}: entries that are not tensors: {describe(bad)}")
    if all(k.startswith(PREFIX) for k in tensors):
        tensors = {k[len(PREFIX) :]: v for k, v in tensors.items()}
    return tensors


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a MedLAM checkpoint on the CPU; keys returned without the ``module.`` prefix.

    Only tensors and plain containers are unpickled (``weights_only``): a checkpoint never runs
    code.

    Raises:
        CheckpointError: missing, empty, truncated/corrupt, or not a state dict.
    """
    path = Path(path)
    obj = load_weights(path, "MedLAM")
    return _extract_state_dict(obj, path)


def _check_fit(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], path: Path, b: int
) -> None:
    found = fit_problems(state, expected)
    order = ("missing keys", "unexpected keys", "mis-shaped")
    problems = [f"{kind} {found[kind]}" for kind in order if kind in found]
    if problems:
        raise CheckpointError(
            f"{path}: does not fit MedLAM (base width {b}): " + "; ".join(problems)
        )


def build_medlam(
    checkpoint: str | os.PathLike[str] | None,
    device: torch.device | str = "cpu",
    base_chns: int | None = None,
) -> MedLAM:
    """Build MedLAM in eval mode on ``device``, loading ``checkpoint`` if given (never downloads).

    Args:
        checkpoint: a published-format ``.pth`` (keys with or without ``module.``, fp16 or
            fp32), or a training file ``{'state_dict': ...}``; None for random weights.
        device: where the model goes (the caller chooses).
        base_chns: width; None infers it from the checkpoint (24 without one). A given width
            that disagrees with the checkpoint is an error.

    Raises:
        CheckpointError: one line naming the file and the first missing, unexpected or
            mis-shaped keys, or why the file cannot be read.
    """
    if checkpoint is None:
        model = MedLAM(base_chns or PUBLISHED_BASE_CHNS)
        return model.to(device).eval()
    path = Path(checkpoint)
    state = load_state_dict_file(path)
    if WIDTH_KEY not in state or state[WIDTH_KEY].ndim != 5 or state[WIDTH_KEY].shape[0] % 2:
        shape = list(state[WIDTH_KEY].shape) if WIDTH_KEY in state else None
        raise CheckpointError(
            f"{path}: does not fit MedLAM: key {PREFIX}{WIDTH_KEY} is "
            f"{'missing' if shape is None else shape} (expected shape [2*width, 1, 3, 3, 3])"
        )
    width = int(state[WIDTH_KEY].shape[0]) // 2
    if base_chns is not None and base_chns != width:
        raise CheckpointError(
            f"{path}: checkpoint has base width {width}, but width {base_chns} was requested"
        )
    _check_fit(state, parameter_shapes(width), path, width)
    model = MedLAM(width)
    with torch.no_grad():
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.checkpoint_sha256 = file_sha256(path)  # type: ignore[attr-defined]
    model.checkpoint_path = path  # type: ignore[attr-defined]
    logger.debug("loaded MedLAM width %d from %s", width, path)
    return model.to(device).eval()


def save_medlam(model: MedLAM, path: str | os.PathLike[str], half: bool = False) -> Path:
    """Write the published format: a bare state dict with ``module.`` prefixed keys.

    Args:
        half: store fp16 tensors (half the size), as a loader must accept.
    """
    from medlsam.io import atomic_write_bytes

    state = OrderedDict(
        (PREFIX + k, (v.detach().cpu().half() if half else v.detach().cpu().float()).clone())
        for k, v in model.state_dict().items()
    )
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
