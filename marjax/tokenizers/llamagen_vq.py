"""LlamaGen's VQ tokenizers VQ-16 and VQ-8 (FoundationVision/LlamaGen `tokenizer/tokenizer_image/vq_model.py`).

They are `VQModel`s with LlamaGen's attention layout: attention after every res block of the
lowest-resolution level, in the encoder (num_res_blocks of them) and in the decoder
(num_res_blocks + 1), besides the mid attention of both. The quantizer is `VectorQuantizer`'s
LlamaGen mode: z and codebook L2-normalised before the search, losses on the normalised vectors
(codebook mse(z_q, sg z) + 0.25 mse(sg z_q, z)), straight-through, normalised codes to the
decoder. Codes of (B, H, W, 3) images are (B, H/stride, W/stride) int32 (stride 16 or 8).
`VQTokenizer(llamagen_vq("vq16"), params)` is the discrete tokenizer. LlamaGen's entropy loss
(ratio 0 in every published config) is not implemented.
"""
from collections.abc import Sequence

from marjax.tokenizers.vq import VQModel

# VQModel's defaults are LlamaGen's ModelArgs (ch 128, 2 res blocks, z_channels 256, codebook
# 16384 x 8, L2-normalised, beta 0.25); the sizes differ only in their levels.
PRESETS: dict[str, dict[str, Sequence[int]]] = {
    "vq16": dict(ch_mult=(1, 1, 2, 2, 4)),  # 71,883,403 params
    "vq8": dict(ch_mult=(1, 2, 2, 4)),  # 70,109,835 params
}


def llamagen_vq(preset: str = "vq16", **overrides) -> VQModel:
    """The VQModel of a published size ("vq16", "vq8") with LlamaGen's attention layout; `overrides`
    change VQModel fields other than where attention sits (e.g. ch, ch_mult, codebook_size for tests)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown LlamaGen VQ preset {preset!r}; choose one of {sorted(PRESETS)}")
    fields = {**PRESETS[preset], **overrides}
    last = len(fields["ch_mult"]) - 1
    # The encoder places attention by a nominal resolution halved at each level; naming the
    # stride as the image size puts resolution 1 at the last level, the only one LlamaGen attends at.
    return VQModel(**fields, resolution=2 ** last, attn_resolutions=(1,), decoder_attn_levels=(last,))
