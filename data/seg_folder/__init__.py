"""Any folder of images + lesion masks (BUS-BRA, BUS-UCLM predefined); importing registers
`seg_folder`."""
from .folder_files import check
from .seg_folder_dataset_builder import BUS_UCLM, BUSBRA, Builder, FolderConfig
