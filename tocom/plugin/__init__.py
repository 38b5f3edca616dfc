"""The ToCom plugin: LoRA groups between adjacent compression degrees, and how to apply them."""
from .compensate import Compensation, compensate
from .tocom import VARIANTS, ToCom, backbone_name

__all__ = ["Compensation", "ToCom", "VARIANTS", "backbone_name", "compensate"]
