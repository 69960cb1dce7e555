"""The accelerated SAM image encoder gives the stock encoder's outputs and masks.

Tiny ``segment_anything`` models built from the stock classes (random weights, non-zero relative
position tables so that term matters), window-attention blocks with and without token padding,
global-attention blocks, batch > 1.

Tolerance: the fused attention computes the same sums in another order (``scale * (q @ k)``
instead of ``(scale * q) @ k``, blockwise softmax), so outputs differ by float32 rounding only;
with reductions over at most a few hundred terms that is well under ``1e-5`` of the output's
scale (float32 epsilon is 1.2e-7). Masks are compared bit for bit; a pixel may only differ where
the stock logit is itself within rounding of the threshold (checked, and counted).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.modeling.image_encoder import Block

from medlsam.segment.fast import (
    FastBlock,
    FastImageEncoderViT,
    accelerate_image_encoder,
    configure_cpu_threads,
    is_accelerated,
    restore_image_encoder,
)

REL_TOL = 1e-5  # of the output's max magnitude; see the module docstring

# (img_size, window_size, global_attn_indexes, use_rel_pos, qkv_bias, batch): tokens = img/16
ENCODER_CASES = [
    (256, 6, (1, 3), True, True, 2),  # 16 tokens: windows padded 16 -> 18, two global blocks
    (256, 4, (2,), True, True, 1),  # windows tile the grid exactly
    (192, 5, (0,), True, False, 1),  # 12 tokens padded to 15, no qkv bias
    (128, 3, (), False, True, 2),  # no relative positions, windows only
]


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial random weights everywhere (stock init zeroes the rel-pos tables)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            std = 0.5 if ("rel_pos" in name or "bias" in name or "pos_embed" in name) else 0.2
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(std * torch.randn(param.shape, generator=gen))


def _tiny_encoder(img_size, window, global_idx, rel_pos, qkv_bias, seed=0) -> ImageEncoderViT:
    enc = ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=48,
        depth=4,
        num_heads=3,
        mlp_ratio=2.0,
        out_chans=32,
        qkv_bias=qkv_bias,
        use_rel_pos=rel_pos,
        window_size=window,
        global_attn_indexes=global_idx,
    )
    _randomize(enc, seed)
    return enc.eval()


def _tiny_sam(seed: int = 0) -> Sam:
    """A SAM with the stock classes at toy size: 256² input, 16² embedding of 32 channels."""
    img, prompt_dim = 256, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img,
            patch_size=16,
            embed_dim=48,
            depth=4,
            num_heads=3,
            mlp_ratio=2.0,
            out_chans=prompt_dim,
            use_rel_pos=True,
            window_size=6,
            global_attn_indexes=(1, 3),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(img // 16, img // 16),
            input_image_size=(img, img),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    )
    _randomize(sam.image_encoder, seed)
    return sam.eval()


@pytest.mark.parametrize("img_size,window,global_idx,rel_pos,qkv_bias,batch", ENCODER_CASES)
def test_encoder_output_matches_stock(img_size, window, global_idx, rel_pos, qkv_bias, batch):
    stock = _tiny_encoder(img_size, window, global_idx, rel_pos, qkv_bias)
    fast = accelerate_image_encoder(copy.deepcopy(stock))
    assert isinstance(fast, FastImageEncoderViT) and is_accelerated(fast)
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = stock(x), fast(x)
    scale = ref.abs().max().item()
    assert out.shape == ref.shape == (batch, 32, img_size // 16, img_size // 16)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=REL_TOL * scale)


def test_small_mask_chunks_and_grad_path_match_stock():
    """One head per chunk (tiny mask budget), and the out-of-place path used under autograd."""
    stock = _tiny_encoder(256, 6, (1, 3), True, True)
    fast = accelerate_image_encoder(copy.deepcopy(stock), max_mask_bytes=1)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = stock(x)
        out_chunked = fast(x)
    out_grad = fast(x.requires_grad_())  # grad enabled: no in-place residuals
    out_grad.sum().backward()
    scale = ref.abs().max().item()
    torch.testing.assert_close(out_chunked, ref, rtol=0, atol=REL_TOL * scale)
    torch.testing.assert_close(out_grad.detach(), ref, rtol=0, atol=REL_TOL * scale)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_state_dict_unchanged_and_checkpoints_load():
    sam = _tiny_sam()
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    accelerate_image_encoder(sam)
    after = sam.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # a stock checkpoint loads strictly into an accelerated model, and vice versa
    fresh = accelerate_image_encoder(_tiny_sam(seed=5))
    fresh.load_state_dict(before, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], before[k]) for k in before)
    assert isinstance(sam.image_encoder, ImageEncoderViT)
    assert all(isinstance(b, Block) for b in sam.image_encoder.blocks)


def test_accelerate_is_idempotent_and_restorable():
    sam = _tiny_sam()
    assert accelerate_image_encoder(accelerate_image_encoder(sam)) is sam
    assert all(type(b) is FastBlock for b in sam.image_encoder.blocks)
    restore_image_encoder(sam)
    assert not is_accelerated(sam)
    assert type(sam.image_encoder) is ImageEncoderViT
    assert all(type(b) is Block for b in sam.image_encoder.blocks)


def test_rejects_non_sam_models():
    with pytest.raises(TypeError, match="ImageEncoderViT"):
        accelerate_image_encoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_mask_bytes"):
        accelerate_image_encoder(_tiny_sam(), max_mask_bytes=0)


def test_predictor_masks_identical():
    """SamPredictor on the stock and the accelerated model: same masks for several boxes.

    Both thresholds used in practice are checked: SAM's (up-sampled logits > 0) and the published
    MedLSAM one (sigmoid of the low-resolution logits up-sampled to the input frame > 0.5).
    """
    stock = _tiny_sam()
    fast = accelerate_image_encoder(copy.deepcopy(stock))
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)  # H x W x RGB, not square
    image[60:140, 80:170] //= 3  # some structure for the boxes to hold
    boxes = np.array([[70, 50, 180, 150], [0, 0, 239, 199], [100, 90, 130, 120]], np.float32)

    results = []
    for model in (stock, fast):
        predictor = SamPredictor(model)
        predictor.set_image(image)
        per_box = []
        for box in boxes:
            logits_up, _, low_res = predictor.predict(
                box=box, multimask_output=False, return_logits=True
            )
            lowres_t = torch.from_numpy(low_res)[None]  # (1, 1, 256, 256)
            prob_up = torch.nn.functional.interpolate(
                torch.sigmoid(lowres_t),
                size=image.shape[:2],
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            per_box.append((logits_up[0], prob_up))
        results.append((predictor.get_image_embedding(), per_box))

    (emb_ref, ref_boxes), (emb_fast, fast_boxes) = results
    torch.testing.assert_close(emb_fast, emb_ref, rtol=0, atol=REL_TOL * emb_ref.abs().max().item())
    for (logit_ref, prob_ref), (logit_fast, prob_fast) in zip(ref_boxes, fast_boxes):
        for ref, new, thr in ((logit_ref, logit_fast, 0.0), (prob_ref, prob_fast, 0.5)):
            mask_ref, mask_new = ref > thr, new > thr
            assert 0 < mask_ref.sum() < mask_ref.size  # the test can see a difference
            differ = mask_ref != mask_new
            near = np.abs(ref - thr) <= 1e-4 * max(1.0, np.abs(ref).max())
            assert not (differ & ~near).any()
            assert differ.sum() == 0, f"{differ.sum()} pixels differ within rounding of {thr}"


def test_configure_cpu_threads_sets_and_reports():
    previous = torch.get_num_threads()
    try:
        assert configure_cpu_threads(1) == 1 == torch.get_num_threads()
        assert configure_cpu_threads() >= 1
        with pytest.raises(ValueError):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
def test_vit_b_encoder_matches_stock():
    """Real-size ViT-B (random weights, rel-pos randomised), one 1024² image: ~1 minute on CPU."""
    from segment_anything import build_sam_vit_b

    torch.manual_seed(0)
    stock = build_sam_vit_b(checkpoint=None).image_encoder.eval()
    with torch.no_grad():
        for blk in stock.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.1)
            blk.attn.rel_pos_w.normal_(0, 0.1)
    fast = accelerate_image_encoder(copy.deepcopy(stock))
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        ref, out = stock(x), fast(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=REL_TOL * ref.abs().max().item())
