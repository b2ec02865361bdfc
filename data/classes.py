"""The class names every dataset's `label` uses, so models and metrics agree across datasets.

'unspecified' is an image with a lesion whose pathology its dataset does not give. BUSI keeps
its own three-name label; its indices agree with the first three.
"""
CLASS_NAMES = ('benign', 'malignant', 'normal', 'unspecified')  # label index = position
NORMAL = 2
