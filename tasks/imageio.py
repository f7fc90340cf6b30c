"""Image I/O: DICOM and PNG reading, DICOM writing (for synthetic data), resizing.

Owns :func:`read_dicom_with_header` (uncompressed, JPEG Baseline, RLE Lossless, JPEG
2000 lossless and lossy (pylibjpeg-openjpeg), MONOCHROME1 inversion, the modality LUT,
PALETTE COLOR through its colour palette to grayscale; any failure a
``DicomReadError`` naming the file and the reason), :func:`read_dicom_header` (header
only), :func:`read_png` (PNG re-exports), :func:`write_dicom` (a real Secondary
Capture DICOM, plain or compressed) and :func:`resize_image` / :func:`resize_mask`
(the cache's fixed size).

JPEG Baseline is decoded by Pillow (libjpeg-turbo) where pydicom has that plugin:
:data:`PREFERRED_DECODER`. pydicom's own order puts pylibjpeg-libjpeg first, which
decodes a 1024x1024 baseline frame about 4x slower (21 vs 5.3 ms on this project's
machine) and differs from libjpeg-turbo by at most 1 grey level (both are conforming
decoders of a lossy format). If the preferred plugin fails on a file, pydicom's other
plugins are tried before the file counts as unreadable. :func:`decoders` (the preferred
plugins present) is part of the cache keys, so each cache is made by one decoder.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.pixels
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit

from tasks.errors import DicomReadError

# transfer syntax -> the pydicom decoding plugin to try first (see the module docstring)
PREFERRED_DECODER = {JPEGBaseline8Bit: "pillow"}


def read_dicom_with_header(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Decode one DICOM to uint8 (H, W) and return it with its header summary.

    MONOCHROME1 is inverted on the stored values, then the modality LUT
    (RescaleSlope/Intercept) is applied. Values already in [0, 255] are kept (rounded);
    anything else is min-max scaled per image to [0, 255].

    PALETTE COLOR: the stored values are indices into the file's colour palette, never
    intensities. The palette is applied (``pydicom.pixels.apply_color_lut``) and the
    colours converted to grayscale with the ITU-R BT.601 luma weights (0.299 R + 0.587 G
    + 0.114 B, as Pillow's ``convert("L")``), on the palette's own scale (8- or 16-bit
    entries: 2**bits - 1 is white). A palette that is missing or cannot be applied makes
    the file a DicomReadError saying so.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for broken files
        raise DicomReadError(f"{path}: not a readable DICOM file ({e})") from e
    header = _header(ds, path)
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: DICOM has no pixel data")
    try:
        raw = _pixel_array(ds)
    except Exception as e:
        raise DicomReadError(
            f"{path}: cannot decode pixel data (transfer syntax {header['transfer_syntax']}): {e}"
        ) from e
    if raw.ndim != 2:
        raise DicomReadError(
            f"{path}: expected a single-frame grayscale image, got pixel array of shape {raw.shape}"
        )
    if header["photometric"] == "PALETTE COLOR":
        return _palette_to_gray(raw, ds, path), header
    if header["photometric"] == "MONOCHROME1":
        raw = _invert(raw, ds)
    try:
        values = pydicom.pixels.apply_modality_lut(raw, ds)
    except Exception as e:
        raise DicomReadError(f"{path}: cannot apply modality LUT: {e}") from e
    return _to_uint8(np.asarray(values)), header


def _pixel_array(ds) -> np.ndarray:
    """The stored pixel values, decoded first by :data:`PREFERRED_DECODER`'s plugin for the
    file's transfer syntax when pydicom has it, else (or if it fails) by pydicom's order."""
    meta = getattr(ds, "file_meta", None)
    plugin = PREFERRED_DECODER.get(meta.get("TransferSyntaxUID") if meta is not None else None)
    if plugin and plugin in _available_plugins(meta.TransferSyntaxUID):
        try:
            return pydicom.pixels.pixel_array(ds, decoding_plugin=plugin)
        except Exception:  # noqa: BLE001 - pydicom's other plugins decide below
            pass
    return ds.pixel_array


def decoders() -> dict[str, str]:
    """{transfer syntax: plugin} of the preferred decoders this environment has: part of
    every decoded-image cache key, since another decoder of a lossy syntax may give other
    pixels (a cache made without Pillow's JPEG plugin is not reused once it is there)."""
    return {str(uid): p for uid, p in PREFERRED_DECODER.items() if p in _available_plugins(uid)}


@functools.cache
def _available_plugins(uid) -> tuple[str, ...]:
    try:
        return tuple(pydicom.pixels.get_decoder(uid).available_plugins)
    except Exception:  # noqa: BLE001 - no decoder for this syntax: pydicom's error later
        return ()


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Decode one DICOM to a uint8 (H, W) array; raises DataError on any failure."""
    return read_dicom_with_header(path)[0]


def read_dicom_header(path: str | os.PathLike) -> dict:
    """Header summary without touching pixel data: rows, columns, patient_id,
    photometric, transfer_syntax."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise DicomReadError(f"{path}: not a readable DICOM file ({e})") from e
    return _header(ds, path)


def _header(ds, path) -> dict:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise DicomReadError(f"{path}: DICOM header has no Rows/Columns (truncated?)")
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    pid = ds.get("PatientID")
    return {
        "rows": int(rows),
        "columns": int(cols),
        "patient_id": str(pid).strip() if pid is not None else None,
        "photometric": str(ds.get("PhotometricInterpretation", "")).strip(),
        "transfer_syntax": str(ts) if ts else None,
    }


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A grayscale uint8 image from a PNG re-export (8- or 16-bit, gray or colour;
    16-bit values are divided by 257, so 65535 -> 255).

    An unreadable file raises DicomReadError (the "one image could not be read" error
    the cache builder skips and counts), so PNG and DICOM datasets fail the same way.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16"):  # 16-bit gray: keep the stored scale
                return np.rint(np.asarray(im, np.float64) / 257.0).astype(np.uint8)
            if im.mode in ("I", "F"):  # 32-bit: no declared range, stretch it
                return _to_uint8(np.asarray(im))
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise DicomReadError(f"{path}: not a readable PNG file ({e})") from e


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 R, G, B weights (Pillow's convert("L"))


def _palette_to_gray(raw: np.ndarray, ds, path) -> np.ndarray:
    """A PALETTE COLOR image's indices -> its palette's colours -> uint8 grayscale."""
    where = f"{path}: PALETTE COLOR image"
    if "RedPaletteColorLookupTableDescriptor" not in ds:
        raise DicomReadError(
            f"{where} without a colour palette (no Red/Green/Blue Palette Color Lookup "
            "Table): its stored values are palette indices, not intensities; refusing to "
            "read them as an image"
        )
    try:
        rgb = np.asarray(pydicom.pixels.apply_color_lut(raw, ds), dtype=np.float64)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception as e:  # noqa: BLE001 - pydicom raises several types for bad palettes
        raise DicomReadError(
            f"{where}: cannot apply its colour palette ({type(e).__name__}: {e}); its "
            "stored values are palette indices, not intensities"
        ) from e
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DicomReadError(f"{where}: the palette gave an array of shape {rgb.shape}, not RGB")
    top = float((1 << bits) - 1) if bits in (8, 16) else float(max(rgb.max(), 1.0))
    gray = rgb @ np.asarray(LUMA) * (255.0 / top)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _invert(raw: np.ndarray, ds) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2 on stored values.

    Unsigned: (2**BitsStored - 1) - raw. Signed: -1 - raw (mirror of the signed range).
    """
    if int(ds.get("PixelRepresentation", 0)) == 0:
        bits = int(ds.get("BitsStored", raw.dtype.itemsize * 8))
        return ((1 << bits) - 1) - raw.astype(np.int64)
    return -1 - raw.astype(np.int64)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= 255:
        if values.dtype.kind in "uib":  # whole numbers: the float path's bytes, without it
            return values.astype(np.uint8)
        return np.rint(values).astype(np.uint8)
    values = values.astype(np.float64, copy=False)
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def write_dicom(
    path: str | os.PathLike,
    pixels_uint8: np.ndarray,
    *,
    patient_id: str,
    sop_uid: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    compression: str | None = None,
    monochrome1: bool = False,
    rescale: tuple[float, float] | None = None,
) -> Path:
    """Write a real Secondary Capture DICOM whose `read_dicom` gives back `pixels_uint8`.

    compression: None (Explicit VR Little Endian), "rle" (RLE Lossless via pydicom's
    `Dataset.compress`, which uses pylibjpeg-rle when installed, else its own encoder),
    "jpeg" (JPEG Baseline 8-bit via Pillow, quality 95; lossy, so reading it
    back is close but not exact), "j2k" (JPEG 2000 Lossless) or "j2k-lossy" (JPEG 2000,
    compression ratio 10), both via `Dataset.compress` and pylibjpeg-openjpeg. monochrome1 stores inverted values with
    PhotometricInterpretation MONOCHROME1. rescale=(slope, intercept) stores
    round((pixels - intercept) / slope) with RescaleSlope/Intercept; the round trip is
    exact when (pixels - intercept) is a multiple of slope, otherwise within slope / 2.
    """
    stored = _stored_values(pixels_uint8, rescale, monochrome1)
    ds = _secondary_capture(stored, patient_id, sop_uid, study_uid, series_uid, monochrome1)
    if rescale is not None:
        ds.RescaleSlope = f"{float(rescale[0]):g}"
        ds.RescaleIntercept = f"{float(rescale[1]):g}"
        ds.RescaleType = "US"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB"
    _compress(ds, stored, compression)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _stored_values(pixels_uint8, rescale, monochrome1: bool) -> np.ndarray:
    """The uint8 values to store so that reading them back gives `pixels_uint8`."""
    pixels = np.asarray(pixels_uint8)
    if pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise ValueError(f"write_dicom needs a 2-D uint8 array, got {pixels.dtype} {pixels.shape}")
    stored = pixels.astype(np.float64)
    if rescale is not None:
        slope, intercept = rescale
        stored = np.rint((stored - intercept) / slope)
        if stored.min() < 0 or stored.max() > 255:
            raise ValueError(f"rescale {rescale} puts stored values outside 0..255")
    stored = stored.astype(np.uint8)
    if monochrome1:
        stored = 255 - stored
    return stored


def _secondary_capture(
    stored: np.ndarray, patient_id: str, sop_uid: str, study_uid, series_uid, monochrome1: bool
):
    """A Secondary Capture dataset (uncompressed transfer syntax) for 8-bit `stored` pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    study_uid = study_uid or generate_uid(entropy_srcs=[sop_uid, "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[sop_uid, "series"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.BodyPartExamined = "CHEST"
    ds.ImageComments = "cxrbench synthetic"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return ds


COMPRESSIONS = (None, "rle", "jpeg", "j2k", "j2k-lossy")


def _compress(ds, stored: np.ndarray, compression: str | None) -> None:
    """Re-encode the pixel data in place: one of :data:`COMPRESSIONS` (see write_dicom)."""
    from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    if compression == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    elif compression == "j2k":
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    elif compression == "j2k-lossy":
        ds.compress(JPEG2000, j2k_cr=[10], generate_instance_uid=False)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    elif compression == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(stored).save(
            buf, format="JPEG", quality=95, optimize=False, progressive=False
        )
        ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif compression is not None:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size): area averaging when shrinking, bilinear when
    enlarging; aspect ratio is not preserved (source sizes are kept in the manifest)."""
    if image.shape == (size, size):
        return np.asarray(image, np.uint8)
    shrink = image.shape[0] >= size and image.shape[1] >= size
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), resample))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """{0,1} (H, W) -> {0,1} (size, size): area fraction (or bilinear) >= 0.5.

    Shrinking by a power of two in each direction (1024 -> 512, 256, 128, 64, ...) counts
    the pixels of each block in integers; that is Pillow's BOX filter exactly (its weights
    1/2^k and their sums are exact in floating point), in 40% of the time (1024 -> 64:
    2.6-2.9 -> 1.03 ms a mask on this project's machine). Any other size goes through Pillow's BOX (shrinking) or BILINEAR filter on
    the float mask."""
    mask = np.asarray(mask)
    if mask.shape == (size, size):
        return (mask > 0).astype(np.uint8)
    if not mask.any():  # most masks (a negative image): no resampling needed
        return np.zeros((size, size), np.uint8)
    (h, w), binary = mask.shape, (mask > 0).view(np.uint8)
    if h % size == 0 and w % size == 0 and _power_of_two(h // size) and _power_of_two(w // size):
        fh, fw = h // size, w // size
        rows = binary.reshape(h, size, fw).sum(-1, dtype=np.uint32)  # (h, size)
        counts = rows.reshape(size, fh, size).sum(1, dtype=np.uint32)
        return (2 * counts >= fh * fw).astype(np.uint8)
    return _resize_mask_pil(binary, size)


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _resize_mask_pil(mask: np.ndarray, size: int) -> np.ndarray:
    shrink = mask.shape[0] >= size and mask.shape[1] >= size
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    frac = Image.fromarray((mask > 0).astype(np.float32))
    return (np.asarray(frac.resize((size, size), resample)) >= 0.5).astype(np.uint8)
