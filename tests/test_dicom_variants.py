"""DICOM variants the image reader must get right (issue 11 §7): PALETTE COLOR images go
through their palette to grayscale (never indices read as intensities, or refused with
the reason), and JPEG 2000, lossless and lossy, decodes (pylibjpeg-openjpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
)

from tasks import imageio
from tasks.errors import DicomReadError


def _image(h=48, w=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(40 + 3 * xx + 2 * yy + rng.integers(0, 4, (h, w)), 0, 255).astype(np.uint8)


def _palette_dicom(path: Path, indices: np.ndarray, red, green, blue, bits=16) -> Path:
    """A PALETTE COLOR Secondary Capture built with pydicom: 8-bit indices into a
    256-entry palette whose entries have ``bits`` bits (descriptor [256, 0, bits])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.9"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, "1.2.826.0.1.9"
    ds.PatientID = "pal"
    ds.Rows, ds.Columns = indices.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    dtype = "<u2" if bits == 16 else "u1"
    for name, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, bits])
        setattr(ds, f"{name}PaletteColorLookupTableData", np.asarray(lut).astype(dtype).tobytes())
    ds.PixelData = indices.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- palette colour


def test_palette_gray_ramp_reversed_is_applied_not_read_as_indices(tmp_path):
    indices = _image()
    ramp = (255 - np.arange(256)) * 257  # 16-bit entries: index i is intensity 255 - i
    path = _palette_dicom(tmp_path / "p.dcm", indices, ramp, ramp, ramp)
    image, header = imageio.read_dicom_with_header(path)
    assert header["photometric"] == "PALETTE COLOR"
    np.testing.assert_array_equal(image, 255 - indices)
    assert not np.array_equal(image, indices)  # what reading indices as intensities gives


def test_palette_colours_become_bt601_luma(tmp_path):
    indices = np.array([[0, 1, 2, 3]], np.uint8)
    red, green, blue = np.zeros((3, 256), np.int64)
    red[1], green[2], blue[3] = 255, 255, 255  # index 1 red, 2 green, 3 blue, 0 black
    red[0] = green[0] = blue[0] = 0
    path = _palette_dicom(tmp_path / "c.dcm", indices, red, green, blue, bits=8)
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1 (Pillow's convert("L"))
    np.testing.assert_array_equal(imageio.read_dicom(path), [[0, 76, 150, 29]])


def test_palette_pydicom_sample_file():
    path = get_testdata_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    rgb = pydicom.pixels.apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    expected = np.rint(rgb @ np.array([0.299, 0.587, 0.114]) * 255 / 65535).astype(np.uint8)
    image = imageio.read_dicom(path)
    assert image.shape == (350, 800) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, expected)
    assert not np.array_equal(image, ds.pixel_array)


def test_palette_without_lut_is_refused_with_the_reason(tmp_path):
    ramp = np.arange(256) * 257
    path = _palette_dicom(tmp_path / "n.dcm", _image(), ramp, ramp, ramp)
    ds = pydicom.dcmread(path)
    for name in ("Red", "Green", "Blue"):
        del ds[f"{name}PaletteColorLookupTableDescriptor"]
        del ds[f"{name}PaletteColorLookupTableData"]
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="PALETTE COLOR image without a colour palette") as e:
        imageio.read_dicom(path)
    assert str(path) in str(e.value) and "not intensities" in str(e.value)
    # a palette whose data is cut short cannot be applied: refused, naming why
    path = _palette_dicom(tmp_path / "t.dcm", _image(), ramp, ramp, ramp)
    ds = pydicom.dcmread(path)
    ds.GreenPaletteColorLookupTableData = ds.GreenPaletteColorLookupTableData[:10]
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="cannot apply its colour palette"):
        imageio.read_dicom(path)


# --------------------------------------------------------------------------- JPEG 2000


def test_jpeg2000_lossless_written_by_pydicom_is_exact(tmp_path):
    pixels = _image()
    path = imageio.write_dicom(tmp_path / "l.dcm", pixels, patient_id="p", sop_uid="1.2.3.10",
                               compression="j2k")  # fmt: skip
    assert imageio.read_dicom_header(path)["transfer_syntax"] == JPEG2000Lossless
    np.testing.assert_array_equal(imageio.read_dicom(path), pixels)
    # MONOCHROME1 through JPEG 2000: inverted back
    path = imageio.write_dicom(tmp_path / "m.dcm", pixels, patient_id="p", sop_uid="1.2.3.11",
                               compression="j2k", monochrome1=True)  # fmt: skip
    np.testing.assert_array_equal(imageio.read_dicom(path), pixels)


def test_jpeg2000_lossy_written_by_pydicom_is_close(tmp_path):
    pixels = _image()
    path = imageio.write_dicom(tmp_path / "y.dcm", pixels, patient_id="p", sop_uid="1.2.3.12",
                               compression="j2k-lossy")  # fmt: skip
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000 and ds.LossyImageCompression == "01"
    err = np.abs(imageio.read_dicom(path).astype(int) - pixels)
    assert err.mean() < 2.5 and err.max() <= 16 and err.max() > 0  # lossy, yet close


def test_jpeg2000_pydicom_sample_files():
    # lossless: the same pixels as the uncompressed file it was made from
    plain = imageio.read_dicom(get_testdata_file("MR_small.dcm"))
    j2k, header = imageio.read_dicom_with_header(get_testdata_file("MR_small_jp2klossless.dcm"))
    assert header["transfer_syntax"] == JPEG2000Lossless
    np.testing.assert_array_equal(j2k, plain)
    # lossy (JPEG 2000 Image Compression): decodes to the header's size, full range
    image, header = imageio.read_dicom_with_header(get_testdata_file("693_J2KI.dcm"))
    assert header["transfer_syntax"] == JPEG2000 and image.shape == (512, 512)
    raw = pydicom.dcmread(get_testdata_file("693_J2KI.dcm")).pixel_array.astype(np.float64)
    values = pydicom.pixels.apply_modality_lut(
        raw, pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    )
    expected = np.rint((values - values.min()) * 255 / (values.max() - values.min()))
    np.testing.assert_array_equal(image, expected.astype(np.uint8))


def test_unknown_compression_is_named():
    with pytest.raises(ValueError, match="j2k-lossy"):
        imageio.write_dicom("/nonexistent/x.dcm", _image(), patient_id="p", sop_uid="1.2",
                            compression="jpeg-ls")  # fmt: skip
