"""Analytic cost of a Segmenter forward pass: the (tome_ffn-compressed) ViT encoder plus the Mask Transformer.

The encoder is counted by `tocom.compress.flops`, in the same convention (one multiply-add is one FLOP;
norms, softmax, activations and the final bilinear upsampling left out). `attention_matmuls=False` leaves
out q kᵀ and attention · v in the encoder and the decoder: the convention of the ToCom paper's Table 11,
whose 106.2 GFLOPs for Segmenter (DeiT-B/16-384 + Mask Transformer, 150 classes) at 512 x 512 cannot
include them -- with q kᵀ and attention · v the encoder alone is 107.0 GFLOPs (129.3 with the
decoder). Without them, tome_ffn at r = 0 / 256 / 384 / 512 gives 105.78 / 91.49 / 84.24 / 76.99 on
the distilled DeiT-B/16-384 of Segmenter's Seg-B†-Mask/16 (0.31-0.40 % below the paper's 106.2 /
91.8 / 84.5 / 77.3) and 105.70 / 91.40 / 84.15 / 76.91 on `deit_base_patch16_384` (0.41-0.51 %
below). What we leave out and a counter may include covers the rest: the layer norms (~0.12 G at
5 FLOPs per element), the bilinear upsampling of 150 maps to 512² (~0.16 G at 4 per output) and
the biases (~0.10 G). The per-r drops are the MLP of r tokens in 12 layers (14.50 / 21.74 / 28.99 G)
less ToMe's matching (0.20 G), against the paper's 14.4 / 21.7 / 28.9.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..compress import DENSE_METHODS, flops, method_of

#: Table 11's convention: q kᵀ and attention · v are not counted (see above). Whatever reports a Segmenter's
#: GFLOPs beside the paper's (`tocom segment-evaluate`'s rows, `tocom flops --head segmenter`) counts with it.
TABLE11_ATTENTION_MATMULS = False


def segmenter_flops(model: nn.Module, r: int | Sequence[int] = 0, method: str | None = None,
                    attention_matmuls: bool = True) -> dict:
    """`tocom.compress.flops` of the encoder (unpatched, it is counted as tome_ffn would run it) plus the
    decoder's: `gflops` is the whole, `encoder_gflops` and `decoder_gflops` the parts."""
    encoder = model.tocom_backbone
    out = flops(encoder, r, method or method_of(encoder) or DENSE_METHODS[0], attention_matmuls)
    dec = model.decoder
    dec_flops = mask_transformer_flops(
        n_patch=encoder.patch_embed.num_patches, enc_dim=encoder.embed_dim, dim=dec.dim, depth=len(dec.blocks),
        n_cls=dec.n_cls, mlp_hidden=dec.blocks[0].mlp.fc1.out_features,
        attention_matmuls=attention_matmuls) if dec is not None else 0
    out["encoder_gflops"] = out["gflops"]
    out["decoder_gflops"] = dec_flops / 1e9
    out["gflops"] += dec_flops / 1e9
    return out


def mask_transformer_flops(n_patch: int, enc_dim: int, dim: int, depth: int, n_cls: int, mlp_hidden: int,
                           attention_matmuls: bool = True) -> int:
    """Multiply-adds of Segmenter's Mask Transformer decoder for one image (Strudel et al., 2021).

    Counted: the projection of the encoder's patch tokens to the decoder width (n_patch x enc_dim x
    dim); `depth` pre-norm transformer layers on the n_patch + n_cls tokens (qkv, output projection,
    MLP, and -- unless `attention_matmuls=False` -- q kᵀ and attention · v); the patch and class
    projections (dim x dim each); the masks, patches · classesᵀ (n_patch x n_cls x dim).
    Not counted: layer norms (the decoder's and the mask norm), the L2 normalisation, the bilinear
    upsampling of the n_cls masks to the image (the same conventions as the encoder count).
    At DeiT-B width, 2 layers, 150 classes and 1,024 patch tokens: 22.27 G, or 18.03 G without the
    attention products.
    """
    m = n_patch + n_cls
    total = n_patch * enc_dim * dim                            # encoder tokens -> decoder width
    layer = m * dim * 3 * dim + m * dim * dim + m * 2 * dim * mlp_hidden
    if attention_matmuls:
        layer += 2 * m * m * dim
    total += depth * layer
    total += (n_patch + n_cls) * dim * dim                     # patch and class projections
    total += n_patch * n_cls * dim                             # masks = patches · classesᵀ
    return total
