"""Small ultrasound DICOM files written with pydicom, as scanners export them."""
import numpy as np
from pydicom import uid
from pydicom.dataset import FileDataset, FileMetaDataset

_ULTRASOUND = uid.UID('1.2.840.10008.5.1.4.1.1.6.1')  # Ultrasound Image Storage.
_ULTRASOUND_MULTI_FRAME = uid.UID('1.2.840.10008.5.1.4.1.1.3.1')


def write_dicom(path, pixels: np.ndarray, photometric: str = 'MONOCHROME2',
                bits_stored: int | None = None, **elements) -> None:
  """`pixels`: (H, W) or (frames, H, W), with a trailing 3 for RGB; uint8 or uint16.
  `elements` set further attributes, e.g. WindowCenter=100, RescaleSlope=2."""
  colour = photometric == 'RGB'
  frames = pixels.ndim == (4 if colour else 3)
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = _ULTRASOUND_MULTI_FRAME if frames else _ULTRASOUND
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b'\0' * 128)
  dataset.SOPClassUID = meta.MediaStorageSOPClassUID
  dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  dataset.Modality = 'US'
  dataset.set_pixel_data(pixels, photometric, bits_stored or 8 * pixels.itemsize)
  for name, value in elements.items():
    setattr(dataset, name, value)
  dataset.save_as(str(path), enforce_file_format=True)
