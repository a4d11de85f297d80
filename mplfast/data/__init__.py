"""Data sets, the labeled split, device-resident MPL batching and DALI pipelines."""
from .batcher import MPLBatcher
from .datasets import DATASETS, ImageDataset, labeled_split, load_dataset, make_synthetic

__all__ = ["DATASETS", "ImageDataset", "MPLBatcher", "labeled_split", "load_dataset",
           "make_synthetic"]
