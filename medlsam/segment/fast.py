"""A faster SAM image encoder for CPU (and GPU) inference, with the same weights and outputs.

The stock ``segment_anything`` ViT encoder spends much of its time outside the matrix products:
every attention block materialises the full ``(B*heads, N, N)`` score matrix ``(q*scale) @ k^T``,
adds the decomposed relative-position terms in a second full-size pass, then runs ``softmax`` in a
third pass and ``@ v`` in a fourth. For the four global blocks of ViT-B at 1024² input that is a
``12 x 4096 x 4096`` float32 tensor (805 MB) written and read several times per block.

:func:`accelerate_image_encoder` replaces, in place, the forward of each transformer block and of
the encoder with an equivalent computation:

* attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` (a fused,
  blocked kernel on CPU and CUDA). The decomposed relative-position term
  ``rel_h[q, k_h] + rel_w[q, k_w]`` is passed as the additive float ``attn_mask``; it is built
  once per block and forward, in chunks of heads so the peak memory stays bounded
  (``max_mask_bytes``);
* in window-attention blocks, ``qkv`` is computed on the real tokens only; the zero tokens that
  window partitioning pads on (``64 -> 70`` for ViT at 1024²) get the ``qkv`` bias, which is what
  the stock ``Linear`` gives for a zero input, so the padded keys and values are the same as in the
  stock block; ``proj`` runs after un-partitioning and cropping, on the real tokens only;
* residual additions are done in place when no gradient is needed.

Nothing else changes: the module classes are swapped for subclasses of the stock classes
(``isinstance`` still holds), no parameter or buffer is added, renamed or re-laid-out, so
``state_dict()`` keys and tensors are identical and published checkpoints (SAM, MedSAM) load with
a strict ``load_state_dict`` before or after acceleration.

The outputs equal the stock encoder's up to float32 reordering (the fused kernel scales ``q @ k``
after instead of before the product and accumulates the softmax blockwise), i.e. relative
differences of order 1e-6; the masks that SAM's decoder produces from them are the same except
where a logit lies within that distance of the threshold (see ``tests/test_fast_sam.py``).

Thread settings are the application's business: :func:`configure_cpu_threads` is a helper for it;
the library never changes them by itself.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import (
    Block,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from torch import nn

logger = logging.getLogger(__name__)

#: Default upper bound (bytes) of one chunk of the relative-position attention mask.
DEFAULT_MAX_MASK_BYTES = 256 * 2**20


def _rel_pos_mask(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, hw: tuple[int, int]
) -> torch.Tensor:
    """The decomposed relative-position bias of SAM's attention as an additive mask.

    Args:
        q: queries, ``(B, heads, H*W, head_dim)`` float, in raster (row-major) token order.
        rel_pos_h, rel_pos_w: the block's ``(2*H-1, head_dim)`` / ``(2*W-1, head_dim)`` tables.
        hw: the token grid ``(H, W)`` (queries and keys share it).

    Returns:
        ``(B, heads, H*W, H*W)`` float: ``mask[b, n, (qh, qw), (kh, kw)] = q . Rh[qh, kh] +
        q . Rw[qw, kw]``, the term the stock ``add_decomposed_rel_pos`` adds to the scores.
    """
    h, w = hw
    b, n, _, c = q.shape
    rh = get_rel_pos(h, h, rel_pos_h)  # (H, H, C): [q_h, k_h]
    rw = get_rel_pos(w, w, rel_pos_w)  # (W, W, C): [q_w, k_w]
    r_q = q.reshape(b, n, h, w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
    if torch.is_grad_enabled() and (r_q.requires_grad or rh.requires_grad):
        return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, n, h * w, h * w)
    mask = q.new_empty((b, n, h, w, h, w))  # contiguous: [.., q_h, q_w, k_h, k_w]
    torch.add(rel_h.unsqueeze(-1), rel_w.unsqueeze(-2), out=mask)
    return mask.view(b, n, h * w, h * w)


def _attention(
    qkv: torch.Tensor,
    block: Block,
    hw: tuple[int, int],
    max_mask_bytes: int,
) -> torch.Tensor:
    """Multi-head attention with SAM's decomposed relative-position bias, through fused SDPA.

    Args:
        qkv: ``(B, H*W, 3*dim)`` the ``qkv`` projection of the (windowed) tokens.
        block: the stock block whose ``attn`` holds ``num_heads``, ``scale`` and the rel-pos
            tables.
        hw: token grid ``(H, W)`` of one sequence.
        max_mask_bytes: heads are processed in chunks whose float mask stays under this size.

    Returns:
        ``(B, H*W, dim)``: the attention output before the ``proj`` layer.
    """
    attn = block.attn
    b, n_tok, three_dim = qkv.shape
    heads = attn.num_heads
    # (B, heads, N, head_dim) strided views; the fused kernel reads them in place
    q, k, v = qkv.view(b, n_tok, 3, heads, three_dim // (3 * heads)).permute(2, 0, 3, 1, 4)
    per_head = b * n_tok * n_tok * q.element_size()
    chunk = max(1, min(heads, max_mask_bytes // max(per_head, 1))) if attn.use_rel_pos else heads
    outs = []
    for h0 in range(0, heads, chunk):
        qc, kc, vc = q[:, h0 : h0 + chunk], k[:, h0 : h0 + chunk], v[:, h0 : h0 + chunk]
        mask = None
        if attn.use_rel_pos:
            mask = _rel_pos_mask(qc, attn.rel_pos_h, attn.rel_pos_w, hw).to(qc.dtype)
        outs.append(F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=attn.scale))
        del mask
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (B, heads, N, head_dim)
    # token-major; free when the kernel already wrote (B, N, heads, head_dim), as on CPU
    return out.transpose(1, 2).reshape(b, n_tok, -1)


class FastBlock(Block):
    """SAM ViT block with the fused attention forward; same parameters as :class:`Block`."""

    max_mask_bytes: int = DEFAULT_MAX_MASK_BYTES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, H, W, dim)`` tokens -> ``(B, H, W, dim)``."""
        inplace = not (torch.is_grad_enabled() and x.requires_grad)
        shortcut = x
        bsz, h, w, dim = x.shape
        qkv = self.attn.qkv(self.norm1(x))  # (B, H, W, 3*dim), real tokens only
        if self.window_size > 0:
            ws = self.window_size
            pad_h, pad_w = (-h) % ws, (-w) % ws
            if pad_h or pad_w:
                # stock pads the *normalised* tokens with zeros before qkv: qkv(0) = bias.
                qkv = F.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
                if self.attn.qkv.bias is not None:
                    bias = self.attn.qkv.bias.to(qkv.dtype)
                    qkv[:, h:] = bias
                    qkv[:, :h, w:] = bias
            windows, pad_hw = window_partition(qkv, ws)  # (B*nW, ws, ws, 3*dim)
            y = _attention(
                windows.view(windows.shape[0], ws * ws, -1), self, (ws, ws), self.max_mask_bytes
            )
            y = window_unpartition(y.view(-1, ws, ws, dim), ws, pad_hw, (h, w))
        else:
            y = _attention(qkv.view(bsz, h * w, -1), self, (h, w), self.max_mask_bytes)
            y = y.view(bsz, h, w, dim)
        y = self.attn.proj(y)
        if inplace and y.dtype == shortcut.dtype:  # (under autocast y can be half: promote)
            x = y.add_(shortcut)
            return x.add_(self.mlp(self.norm2(x)))
        x = shortcut + y
        return x + self.mlp(self.norm2(x))


class FastImageEncoderViT(ImageEncoderViT):
    """SAM's ViT image encoder with :class:`FastBlock` blocks; same parameters and outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, S, S)`` normalised image -> ``(B, out_chans, S/16, S/16)`` embedding."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        # (B, H, W, C) permuted is channels-last in memory: the neck convs take it as it is.
        return self.neck(x.permute(0, 3, 1, 2)).contiguous()


def _encoder_of(model: nn.Module) -> ImageEncoderViT:
    encoder = getattr(model, "image_encoder", model)
    if not isinstance(encoder, ImageEncoderViT):
        raise TypeError(
            f"accelerate_image_encoder: expected a segment_anything Sam or ImageEncoderViT, "
            f"got {type(model).__name__} (image encoder {type(encoder).__name__})"
        )
    return encoder


def accelerate_image_encoder(
    sam_model: nn.Module, max_mask_bytes: int = DEFAULT_MAX_MASK_BYTES
) -> nn.Module:
    """Switch a SAM model's ViT image encoder to the fused-attention forward, in place.

    Args:
        sam_model: a ``segment_anything`` ``Sam`` (or its ``ImageEncoderViT``), any size
            (ViT-B/L/H, SAM or MedSAM weights), on any device, loaded before or after this call.
        max_mask_bytes: upper bound of one head-chunk of the relative-position mask (bytes);
            bounds the extra memory of a global-attention block (ViT-B at 1024²: 64 MiB/head).

    Returns:
        ``sam_model`` itself. Its ``state_dict`` is unchanged (same keys and tensors). Blocks that
        are not the stock :class:`Block` class (for example adapter variants) are left untouched.
        Calling it twice is harmless; :func:`restore_image_encoder` undoes it.
    """
    if max_mask_bytes <= 0:
        raise ValueError(f"max_mask_bytes must be positive, got {max_mask_bytes}")
    encoder = _encoder_of(sam_model)
    if type(encoder) in (ImageEncoderViT, FastImageEncoderViT):
        encoder.__class__ = FastImageEncoderViT
    else:
        logger.warning(
            "image encoder %s is not the stock ImageEncoderViT; only its blocks are accelerated",
            type(encoder).__name__,
        )
    skipped = 0
    for blk in encoder.blocks:
        if type(blk) in (Block, FastBlock):
            blk.__class__ = FastBlock
            blk.max_mask_bytes = int(max_mask_bytes)
        else:
            skipped += 1
    if skipped:
        logger.warning(
            "%d encoder blocks are not stock segment_anything Blocks; left as they are", skipped
        )
    return sam_model


def restore_image_encoder(sam_model: nn.Module) -> nn.Module:
    """Undo :func:`accelerate_image_encoder` (back to the stock forward), in place."""
    encoder = _encoder_of(sam_model)
    if type(encoder) is FastImageEncoderViT:
        encoder.__class__ = ImageEncoderViT
    for blk in encoder.blocks:
        if type(blk) is FastBlock:
            blk.__class__ = Block
            blk.__dict__.pop("max_mask_bytes", None)
    return sam_model


def is_accelerated(sam_model: nn.Module) -> bool:
    """True when every block of the model's image encoder uses the fused forward."""
    encoder = _encoder_of(sam_model)
    return all(type(blk) is FastBlock for blk in encoder.blocks)


def configure_cpu_threads(num_threads: int | None = None) -> int:
    """Set PyTorch's intra-op CPU threads; for applications and scripts, never called here.

    Args:
        num_threads: threads to use; ``None`` = the CPUs this process may run on
            (``os.sched_getaffinity``), which is what the encoder's matrix products scale with.

    Returns:
        The number of threads now in effect (``torch.get_num_threads()``).
    """
    if num_threads is None:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            num_threads = os.cpu_count() or 1
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(int(num_threads))
    return torch.get_num_threads()
