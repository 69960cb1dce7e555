"""Test helpers for inference: a tiny random SAM, a fake localizer and a synthetic cohort."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.io import Volume

TINY_DIM = 32
#: Gain on the mask decoder's last layers: random weights otherwise give logits near 0.
OUTPUT_GAIN = 30.0


def tiny_sam(seed: int = 0, depth: int = 2, embed_dim: int = 16, global_attn: bool = False) -> Sam:
    """SAM with a 1024 input and a 64x64 embedding, but about 130 thousand parameters.

    Same classes and wiring as ``segment_anything.build_sam`` (windowed + global attention,
    relative positions), only narrower and shallower; windowed attention only unless
    ``global_attn`` (a global block over 4096 tokens costs a second per slice on a CPU).
    Weights are random (seeded) and the mask decoder's output layers are scaled up so masks
    are neither empty nor full.
    """
    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=1024,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[depth - 1] if global_attn else [],
            window_size=14,
            out_chans=TINY_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=TINY_DIM,
            image_embedding_size=(64, 64),
            input_image_size=(1024, 1024),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=TINY_DIM, mlp_dim=64, num_heads=2),
            transformer_dim=TINY_DIM,
            iou_head_depth=2,
            iou_head_hidden_dim=16,
        ),
    )
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(OUTPUT_GAIN)
    return sam.eval()


class FakeLocalizer:
    """Returns the true 3D box of each organ from a label map (tests only)."""

    def __init__(self, labels: dict[str, Volume] | Volume, classes, parts: int = 1) -> None:
        self.labels = labels
        self.classes = [int(c) for c in classes]
        self.parts = parts
        self.calls = 0

    def predict(self, volume: Volume) -> dict[int, OrganBoxes]:
        self.calls += 1
        label = self.labels if isinstance(self.labels, Volume) else self.labels[volume.name]
        axis = volume.slice_axis()
        out = {}
        for c in self.classes:
            box = Box3D.from_mask(label.data == c)
            if box is None:
                out[c] = OrganBoxes(c, (), np.zeros((0, 6, 3)), False)
                continue
            boxes = [box]
            if self.parts > 1:  # SPL-like: split along the slice axis, one shared slice
                lo, hi = box.lo[axis], box.hi[axis]
                edges = np.linspace(lo, hi, self.parts + 1).round().astype(int)
                boxes = []
                for a, b in zip(edges[:-1], edges[1:]):
                    new_lo, new_hi = list(box.lo), list(box.hi)
                    new_lo[axis], new_hi[axis] = int(a), int(b)
                    boxes.append(Box3D(tuple(new_lo), tuple(new_hi)))
            out[c] = OrganBoxes(c, tuple(boxes), np.zeros((len(boxes), 6, 3)), True)
        return out


def make_cohort(
    root,
    n_queries: int = 2,
    backend: str = "classic",
    query_labels: bool = False,
    orientations=None,
    extra: dict | None = None,
    shape: tuple[int, int, int] = (40, 36, 24),
):
    """Write a synthetic cohort and its ``.txt`` config under ``root``.

    Two support scans; ``n_queries`` queries (seeds 10, 11, ...), query ``n`` stored in
    ``orientations[n]`` (a ``(perm, flips)`` of ``conftest.reorient``). The config names no
    query labels unless ``query_labels``. Returns ``(config path, {case: label Volume})``.
    """
    from conftest import make_ct, reorient

    from medlsam.config import write_config_txt
    from medlsam.io import write_nifti, write_path_list

    root.mkdir(parents=True, exist_ok=True)
    supports, support_labels, queries, labels = [], [], [], {}
    for n in range(2):
        image, label = make_ct(shape, seed=n + 1)
        supports.append(write_nifti(image.data, image.affine, root / f"support_{n}.nii.gz"))
        support_labels.append(
            write_nifti(label.data, label.affine, root / f"support_{n}_seg.nii.gz")
        )
    query_label_paths = []
    for n in range(n_queries):
        image, label = make_ct(shape, seed=10 + n)
        if orientations is not None and orientations[n] is not None:
            image, label = (reorient(v, *orientations[n]) for v in (image, label))
        case = f"query_{n}"
        queries.append(write_nifti(image.data, image.affine, root / f"{case}.nii.gz"))
        query_label_paths.append(write_nifti(label.data, label.affine, root / f"{case}_seg.nii.gz"))
        labels[case] = Volume(label.data, label.affine, root / f"{case}_seg.nii.gz")
    write_path_list(root / "support_image.txt", supports)
    write_path_list(root / "support_label.txt", support_labels)
    write_path_list(root / "query_image.txt", queries)
    write_path_list(root / "query_label.txt", query_label_paths)
    data = {
        "support_image_ls": "support_image.txt",
        "support_label_ls": "support_label.txt",
        "query_image_ls": "query_image.txt",
        "fg_class": [1, 2],
        "fg_class_name": ["liver", "kidney_r"],
        "bbox_mode": "WPL",
        "slice_interval": False,
        "feature_scale_ls": [],
        "seg_save_path": "result/seg",
    }
    if query_labels:
        data["query_label_ls"] = "query_label.txt"
    sections = {"data": data, "vit": {"net_type": "vit_b", "backend": backend}, "weight": {}}
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    config = write_config_txt(root / "test_synthetic.txt", sections)
    return config, labels
