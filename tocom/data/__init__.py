"""Dataset layer: every dataset the pipeline trains or evaluates on, behind one `build_dataset`.

Items are `(FloatTensor[3, img_size, img_size], int)`; datasets expose `.num_classes` and
`.targets`. See docs/datasets.md for the on-disk layouts and how to obtain each dataset.
"""

from .base import TocomDataset
from .registry import VTAB_TASKS, DatasetSpec, build_dataset, build_segmentation_dataset, dataset_names, get_spec
from .transforms import build_transform

__all__ = [
    "DatasetSpec",
    "TocomDataset",
    "VTAB_TASKS",
    "build_dataset",
    "build_segmentation_dataset",
    "build_transform",
    "dataset_names",
    "get_spec",
]
