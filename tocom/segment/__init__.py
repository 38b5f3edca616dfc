"""Semantic segmentation for the ToCom paper's appendix (Table 11): Segmenter with the Mask Transformer
decoder on a timm ViT, and single-scale mIoU. Compression: `tocom.patch(seg, "tome_ffn")`."""
from .flops import TABLE11_ATTENTION_MATMULS, mask_transformer_flops, segmenter_flops
from .metrics import IGNORE_INDEX, MeanIoU, confusion_matrix, iou_from_confusion
from .model import (ADE20K_SETTING, TABLE11_ENCODERS, MaskTransformer, Segmenter, create_segmenter,
                    load_encoder_weights)

__all__ = ["ADE20K_SETTING", "IGNORE_INDEX", "MaskTransformer", "MeanIoU", "Segmenter", "TABLE11_ATTENTION_MATMULS",
           "TABLE11_ENCODERS", "confusion_matrix", "create_segmenter", "iou_from_confusion", "load_encoder_weights",
           "mask_transformer_flops", "segmenter_flops"]
