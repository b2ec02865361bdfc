"""BUSI breast-ultrasound lesion segmentation; importing this registers the TFDS `busi`."""
from .busi_dataset_builder import Builder
