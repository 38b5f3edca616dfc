"""Segmenter (Strudel et al., ICCV 2021): a timm ViT encoder and the Mask Transformer decoder.

Encoder: a timm ViT run at the segmentation resolution (DeiT-B/16-384 at 512 x 512: 32 x 32 =
1,024 patch tokens). Pre-trained position embeddings are resized to the new grid by bilinear
interpolation of the patch part, prefix (class/distillation) embeddings unchanged, as Segmenter
does when it moves an ImageNet model to 512 px (`tocom.models.resize_pos_embed`). The encoder's prefix tokens are
dropped after its final norm; only patch tokens reach the decoder.

Decoder (Mask Transformer): the patch tokens are projected to the decoder width; n_cls learnable
class embeddings are appended; `depth` pre-norm transformer layers process the joint sequence; after
a layer norm, patch and class tokens each go through a learned linear projection and are
L2-normalised; the masks are their scalar products (n_patch x n_cls), layer-normalised over the
classes (the mask norm), reshaped to the patch grid and upsampled bilinearly to the image.

The encoder is an ordinary timm ViT held as `Segmenter.tocom_backbone`, so `tocom.patch(seg,
"tome_ffn")` and `tocom.set_r(seg, r)` work on the Segmenter directly (its FLOPs: `segmenter_flops`);
compensation plugins are applied to `seg.encoder`.

Which encoder Table 11 used: the ToCom paper says "DeiT-B384" with Segmenter's Mask Transformer
and reports 48.7 mIoU at r = 0, which is Segmenter's released Seg-B†-Mask/16 -- built on the
*distilled* DeiT-B/16-384 (`deit_base_distilled_patch16_384`: class + distillation token, 1,026
tokens at 512 px). `deit_base_patch16_384` (class token only) works the same way; see
`TABLE11_ENCODERS` for the FLOPs of both.
"""
from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import Block

from ..errors import TocomError
from ..models import read_state_dict, resize_pos_embed

#: Segmenter's ADE20K setting (Table 11): encoder, resolution, classes, decoder layers.
ADE20K_SETTING = dict(backbone="deit_base_distilled_patch16_384", img_size=512, n_cls=150, decoder_depth=2)
TABLE11_ENCODERS = ("deit_base_distilled_patch16_384", "deit_base_patch16_384")


class MaskTransformer(nn.Module):
    """Segmenter's Mask Transformer: class embeddings decoded jointly with the patch tokens."""

    def __init__(self, n_cls: int, enc_dim: int, dim: int | None = None, depth: int = 2,
                 num_heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 drop_path_rate: float = 0.0):
        super().__init__()
        dim = int(dim or enc_dim)
        num_heads = int(num_heads or max(1, dim // 64))
        if dim % num_heads:
            raise TocomError(f"decoder width {dim} is not divisible by {num_heads} heads; pick decoder_heads "
                             "that divide it")
        if n_cls < 1 or depth < 0:
            raise TocomError(f"a Mask Transformer needs n_cls >= 1 and depth >= 0, got n_cls={n_cls}, depth={depth}")
        self.n_cls, self.dim = int(n_cls), dim
        self.proj_dec = nn.Linear(enc_dim, dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, n_cls, dim))
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, max(depth, 1))][:depth]
        self.blocks = nn.ModuleList([
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout, attn_drop=dropout,
                  drop_path=dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj_patch = nn.Linear(dim, dim, bias=False)
        self.proj_classes = nn.Linear(dim, dim, bias=False)
        self.mask_norm = nn.LayerNorm(n_cls)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)
        scale = self.dim ** -0.5
        with torch.no_grad():                      # unit-scale random projections, as in Segmenter
            self.proj_patch.weight.copy_(scale * torch.randn_like(self.proj_patch.weight))
            self.proj_classes.weight.copy_(scale * torch.randn_like(self.proj_classes.weight))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x (B, gh * gw, enc_dim) patch tokens -> masks (B, n_cls, gh, gw)."""
        b, n, _ = x.shape
        gh, gw = grid
        if n != gh * gw:
            raise TocomError(f"the decoder got {n} patch tokens for a {gh} x {gw} grid; segmentation needs every "
                             "patch token (compress with method='tome_ffn', which unmerges after each MLP)")
        x = self.proj_dec(x)
        x = torch.cat([x, self.cls_emb.expand(b, -1, -1)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        patches = F.normalize(self.proj_patch(x[:, :n]), dim=-1)
        classes = F.normalize(self.proj_classes(x[:, n:]), dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))          # (B, n, n_cls)
        return masks.transpose(1, 2).reshape(b, self.n_cls, gh, gw)


class Segmenter(nn.Module):
    """ViT encoder + Mask Transformer; `forward(images)` gives per-pixel class logits at image size."""

    def __init__(self, encoder: nn.Module, n_cls: int, decoder_dim: int | None = None, decoder_depth: int = 2,
                 decoder_heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 drop_path_rate: float = 0.0):
        super().__init__()
        for attr in ("patch_embed", "blocks", "num_prefix_tokens", "embed_dim", "forward_features"):
            if not hasattr(encoder, attr):
                raise TocomError(f"{type(encoder).__name__} is not a timm VisionTransformer; Segmenter's encoder "
                                 "must be one (e.g. timm.create_model('deit_base_patch16_384', img_size=512))")
        self.encoder = encoder
        self.n_cls = int(n_cls)
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.decoder = MaskTransformer(n_cls, encoder.embed_dim, decoder_dim, decoder_depth, decoder_heads,
                                       mlp_ratio, dropout, drop_path_rate)

    @property
    def tocom_backbone(self) -> nn.Module:
        """The ViT that token compression and ToCom act on."""
        return self.encoder

    @property
    def img_size(self) -> int:
        """The resolution the encoder's position embeddings are laid out for (the sliding window)."""
        return int(self.encoder.patch_embed.img_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> logits (B, n_cls, H, W). Padded to a multiple of the patch size, then cropped."""
        h, w = x.shape[-2:]
        p = self.patch_size
        hp, wp = math.ceil(h / p) * p, math.ceil(w / p) * p
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, wp - w, 0, hp - h))
        grid = (hp // p, wp // p)
        if not getattr(self.encoder, "dynamic_img_size", False) and tuple(self.encoder.patch_embed.grid_size) != grid:
            raise TocomError(f"input {h}x{w} px gives a {grid[0]}x{grid[1]} patch grid but the encoder is laid out for "
                             f"{self.img_size} px; use Segmenter.inference (sliding window) or create the encoder "
                             "with dynamic_img_size=True")
        masks = self.decoder(self.encoder.forward_features(x)[:, self.encoder.num_prefix_tokens:], grid)
        masks = F.interpolate(masks, size=(hp, wp), mode="bilinear", align_corners=False)
        return masks[..., :h, :w]

    @torch.no_grad()
    def inference(self, x: torch.Tensor, window: int | None = None, stride: int | None = None) -> torch.Tensor:
        """Segmenter's sliding-window evaluation: logits averaged over windows of `window` px every `stride` px.

        An image smaller than the window is padded to it (zeros, i.e. the mean after normalisation).
        Defaults: window = the encoder's resolution, stride = window (ADE20K: 512 / 512).
        """
        window = int(window or self.img_size)
        stride = int(stride or window)
        if not 0 < stride <= window:
            raise TocomError(f"sliding window: need 0 < stride <= window, got stride {stride}, window {window}")
        b, _, h, w = x.shape
        hp, wp = max(h, window), max(w, window)
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, wp - w, 0, hp - h))

        def starts(size: int) -> list[int]:
            s = list(range(0, size - window + 1, stride))
            return s + [size - window] if s[-1] + window < size else s

        logits = x.new_zeros(b, self.n_cls, hp, wp)
        count = x.new_zeros(1, 1, hp, wp)
        for y0 in starts(hp):
            for x0 in starts(wp):
                logits[..., y0:y0 + window, x0:x0 + window] += self(x[..., y0:y0 + window, x0:x0 + window])
                count[..., y0:y0 + window, x0:x0 + window] += 1
        return (logits / count)[..., :h, :w]


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ImageNet weights into an encoder laid out for another resolution (pos_embed resized, heads dropped)."""
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm."))}
    if "pos_embed" in state and state["pos_embed"].shape != encoder.pos_embed.shape:
        prefix = 0 if getattr(encoder, "no_embed_class", False) else encoder.num_prefix_tokens
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], tuple(encoder.patch_embed.grid_size), prefix)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "head_dist.", "fc_norm."))]
    if missing or unexpected:
        raise TocomError(f"{source} does not fit the {type(encoder).__name__} encoder: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def create_segmenter(backbone: str = "deit_base_patch16_384", n_cls: int = 150, img_size: int = 512,
                     checkpoint: str | Path | None = None, pretrained: bool = False, decoder_dim: int | None = None,
                     decoder_depth: int = 2, decoder_heads: int | None = None, mlp_ratio: float = 4.0,
                     dropout: float = 0.1, drop_path_rate: float = 0.1, dynamic_img_size: bool = False,
                     **encoder_kwargs) -> Segmenter:
    """A Segmenter on the timm ViT `backbone`, laid out for `img_size` px.

    `checkpoint`: ImageNet weights of the encoder (official DeiT .pth or safetensors; position
    embeddings resized bilinearly to the new grid), or a whole Segmenter state dict (keys `encoder.*`,
    `decoder.*`). `drop_path_rate` is the encoder's stochastic depth (Segmenter: 0.1); the decoder
    uses dropout 0.1 and no drop path. Tiny: `create_segmenter("tocom_vit_tiny_patch8_56", n_cls=11,
    img_size=56)`.
    """
    if not timm.is_model(backbone.split(".")[0]):
        raise TocomError(f"unknown backbone {backbone!r}; use a timm ViT name such as deit_base_patch16_384")
    try:
        encoder = timm.create_model(backbone, pretrained=pretrained, img_size=img_size, num_classes=0,
                                    drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size,
                                    **encoder_kwargs)
    except RuntimeError as e:
        if pretrained:
            raise TocomError(f"could not fetch pretrained weights for {backbone} ({e}); pass a local checkpoint "
                             "instead (the official DeiT .pth files load as they are)") from None
        raise
    model = Segmenter(encoder, n_cls, decoder_dim, decoder_depth, decoder_heads, mlp_ratio, dropout)
    if checkpoint:
        state = read_state_dict(checkpoint)
        whole = any(k.startswith("decoder.") for k in state)      # a whole Segmenter, not only encoder weights
        part = {p: {k[len(p):]: v for k, v in state.items() if k.startswith(p)} for p in ("encoder.", "decoder.")}
        load_encoder_weights(model.encoder, part["encoder."] if whole else state, str(checkpoint))
        if whole:
            try:
                model.decoder.load_state_dict(part["decoder."])
            except RuntimeError as e:
                raise TocomError(f"{checkpoint}: its decoder does not fit ({str(e).splitlines()[0]}); "
                                 f"check n_cls/decoder_dim/decoder_depth") from None
    return model
