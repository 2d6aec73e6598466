"""Generate the synthetic DICOM corpora that the benchmark sends.

Each corpus lives in its own folder under the cache folder and is reused when a
manifest (``<folder>.json``), written after the last file, says that it is
complete. The files are
synthetic but shaped like clinical data: full patient, study, series and
equipment modules, unique UIDs for every instance, and pixel data made of
smooth low-frequency structure plus a little noise, so that a lossless codec
compresses them about as well as it compresses real images.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

logger = logging.getLogger(__name__)

# Bump when the generated content changes, so that old caches are rebuilt.
GENERATOR_VERSION = 1

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
DIGITAL_XRAY_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"

# (rows, columns) of the small images: 16-bit pixel data of 10 KB to 100 KB.
SMALL_SHAPES = [(64, 80), (96, 96), (128, 128), (160, 160), (192, 192), (224, 224)]


@dataclass(frozen=True, slots=True)
class Corpus:
    """A generated folder of DICOM files and its totals."""

    name: str
    path: Path
    file_count: int
    total_bytes: int


def corpus_path(cache_dir: Path, kind: str, count: int) -> Path:
    """Return the folder of the corpus ``kind`` with ``count`` files."""
    return cache_dir / f"{kind}-{count}"


def ensure_corpus(cache_dir: Path, kind: str, count: int, seed: int = 1) -> Corpus:
    """Return the corpus ``kind`` of ``count`` files, generating it if missing.

    Parameters
    ----------
    cache_dir : Path
        Folder that holds every corpus; created when missing.
    kind : str
        ``"ct"`` (512x512 16-bit CT, explicit VR little endian), ``"small"``
        (mixed MR, CT, DX and secondary capture images of 10 KB to 100 KB),
        ``"j2k"`` (512x512 CT in JPEG 2000 lossless) or ``"tiny"`` (64x64
        secondary capture images of about 9 KB, 1000 per subfolder).
    count : int
        Number of files.
    seed : int
        Seed of the pixel and size generators.

    Returns
    -------
    Corpus
        The folder and its file count and total size in bytes.

    Raises
    ------
    ValueError
        If ``kind`` is unknown or ``count`` is below 1.
    """
    if kind not in _GENERATORS:
        raise ValueError(
            f"Unknown corpus kind {kind!r}; use one of {sorted(_GENERATORS)}"
        )
    if count < 1:
        raise ValueError(
            f"Invalid file count {count} for corpus {kind!r}; use 1 or more"
        )

    folder = corpus_path(cache_dir, kind, count)
    # The manifest sits beside the folder: the senders scan the folder and
    # would try to send a JSON file inside it.
    manifest = folder.with_suffix(".json")
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        if data.get("version") == GENERATOR_VERSION and data.get("count") == count:
            logger.info("reusing corpus %s (%d files)", folder, count)
            return Corpus(kind, folder, data["count"], data["total_bytes"])
        logger.info("corpus %s is from another generator version, rebuilding", folder)

    # A folder without a valid manifest is a partial run: start again.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    logger.info("generating corpus %s (%d files)", folder, count)
    rng = np.random.default_rng(seed)
    _GENERATORS[kind](folder, count, rng)

    files = list_dicom_files(folder)
    total = sum(path.stat().st_size for path in files)
    manifest.write_text(
        json.dumps(
            {"version": GENERATOR_VERSION, "count": len(files), "total_bytes": total}
        )
    )
    return Corpus(kind, folder, len(files), total)


def list_dicom_files(folder: Path) -> list[Path]:
    """Return every ``.dcm`` file below ``folder``, sorted by path."""
    return sorted(folder.rglob("*.dcm"))


def _smooth_fields(
    rng: np.random.Generator, shape: tuple[int, int], n: int
) -> np.ndarray:
    """Return ``n`` smooth random fields in [-1, 1] made by low-pass filtering noise."""
    rows, cols = shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    # A Gaussian low-pass filter with a cut-off of about 1/40 of the image.
    lowpass = np.exp(-((fx**2 + fy**2) / (2 * 0.025**2)))
    fields = np.empty((n, rows, cols), dtype=np.float32)
    for i in range(n):
        spectrum = np.fft.rfft2(rng.standard_normal(shape)) * lowpass
        field = np.fft.irfft2(spectrum, s=shape)
        fields[i] = field / np.abs(field).max()
    return fields


def _phantom(shape: tuple[int, int]) -> np.ndarray:
    """Return a body-like phantom in Hounsfield units: air, soft tissue, a bone ring."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2, cols / 2
    body = ((x - cx) / (0.42 * cols)) ** 2 + ((y - cy) / (0.36 * rows)) ** 2
    spine_y = cy + 0.2 * rows
    spine = ((x - cx) / (0.06 * cols)) ** 2 + ((y - spine_y) / (0.06 * rows)) ** 2
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body <= 1.0] = 40.0
    image[(body <= 1.0) & (body > 0.93)] = -100.0  # subcutaneous fat
    image[spine <= 1.0] = 700.0
    return image


def _ct_pixels(
    phantom: np.ndarray, fields: np.ndarray, index: int, rng: np.random.Generator
) -> np.ndarray:
    """Return one slice as unsigned 16-bit stored values (rescale intercept -1024)."""
    n = len(fields)
    weight = (index % 50) / 50.0
    texture = (1 - weight) * fields[index % n] + weight * fields[(index + 1) % n]
    hu = phantom + np.where(phantom > -900, 60.0 * texture, 0.0)
    hu += rng.normal(0.0, 8.0, phantom.shape).astype(np.float32)
    return np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)


def _base_dataset(sop_class: str, modality: str, study: dict[str, str]) -> Dataset:
    """Return a dataset with the patient, study, series and equipment modules."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240315"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500.000000"
    ds.AccessionNumber = study["accession"]
    ds.Modality = modality
    ds.Manufacturer = "BENCH"
    ds.InstitutionName = "Loopback General Hospital"
    ds.ReferringPhysicianName = "Referrer^Ann"
    ds.StationName = "BENCH01"
    ds.StudyDescription = "SYNTHETIC BENCHMARK STUDY"
    ds.SeriesDescription = f"{modality} SYNTHETIC SERIES"
    ds.ManufacturerModelName = "Synthetic"
    ds.PatientName = study["patient_name"]
    ds.PatientID = study["patient_id"]
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.PatientAge = "064Y"
    ds.SoftwareVersions = "dicomsend-bench"
    ds.StudyInstanceUID = study["study_uid"]
    ds.SeriesInstanceUID = study["series_uid"]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.PatientOrientation = ""
    ds.FrameOfReferenceUID = study["frame_uid"]
    ds.PositionReferenceIndicator = ""
    return ds


def _new_study(index: int) -> dict[str, str]:
    return {
        "accession": f"ACC{index:07d}",
        "patient_name": f"Bench^Patient{index:05d}",
        "patient_id": f"BENCH{index:06d}",
        "study_uid": generate_uid(),
        "series_uid": generate_uid(),
        "frame_uid": generate_uid(),
    }


def _set_pixels(
    ds: Dataset, pixels: np.ndarray, photometric: str = "MONOCHROME2"
) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if ds.BitsAllocated == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def _attach_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DSBENCH_1"
    ds.file_meta = meta


def _write(ds: Dataset, path: Path) -> None:
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        _attach_meta(ds)
    ds.save_as(path, enforce_file_format=True)


def _ct_slice(
    study: dict[str, str], index: int, pixels: np.ndarray, total: int
) -> Dataset:
    ds = _base_dataset(CT_IMAGE_STORAGE, "CT", study)
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = "360"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "600"
    ds.XRayTubeCurrent = "250"
    ds.Exposure = "150"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    z = -0.625 - 1.25 * index
    ds.ImagePositionPatient = ["-180", "-180", f"{z:.3f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.3f}"
    ds.ImagesInAcquisition = total
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    _set_pixels(ds, pixels)
    return ds


def _generate_ct(folder: Path, count: int, rng: np.random.Generator) -> None:
    shape = (512, 512)
    fields = _smooth_fields(rng, shape, 8)
    phantom = _phantom(shape)
    # A new series every 250 slices keeps the UIDs and positions plausible.
    study = _new_study(0)
    for i in range(count):
        if i and i % 250 == 0:
            study = _new_study(i)
        ds = _ct_slice(study, i, _ct_pixels(phantom, fields, i, rng), count)
        _write(ds, folder / f"CT{i:06d}.dcm")


def _generate_j2k(folder: Path, count: int, rng: np.random.Generator) -> None:
    shape = (512, 512)
    fields = _smooth_fields(rng, shape, 4)
    phantom = _phantom(shape)
    study = _new_study(0)
    for i in range(count):
        ds = _ct_slice(study, i, _ct_pixels(phantom, fields, i, rng), count)
        _attach_meta(ds)
        # compress() also sets the file meta Transfer Syntax UID.
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        _write(ds, folder / f"J2K{i:06d}.dcm")


def _generate_small(folder: Path, count: int, rng: np.random.Generator) -> None:
    fields = {shape: _smooth_fields(rng, shape, 4) for shape in SMALL_SHAPES}
    kinds = [
        (MR_IMAGE_STORAGE, "MR"),
        (CT_IMAGE_STORAGE, "CT"),
        (DIGITAL_XRAY_STORAGE, "DX"),
        (SECONDARY_CAPTURE_STORAGE, "OT"),
    ]
    studies = [_new_study(1000 + k) for k in range(len(kinds))]
    for i in range(count):
        k = i % len(kinds)
        sop_class, modality = kinds[k]
        shape = SMALL_SHAPES[int(rng.integers(len(SMALL_SHAPES)))]
        base = fields[shape][i % 4]
        noise = rng.normal(0.0, 0.02, shape)
        pixels = np.clip((base + noise + 1.0) * 1500.0, 0, 4095).astype(np.uint16)
        ds = _base_dataset(sop_class, modality, studies[k])
        ds.InstanceNumber = i + 1
        ds.ConversionType = "WSD" if modality == "OT" else None
        if ds.ConversionType is None:
            del ds.ConversionType
        if modality == "DX":
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.ImagerPixelSpacing = ["0.2", "0.2"]
        else:
            ds.PixelSpacing = ["1.0", "1.0"]
            ds.ImagePositionPatient = ["0", "0", f"{float(i):.1f}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.SliceThickness = "3"
        if modality == "MR":
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.MRAcquisitionType = "2D"
            ds.EchoTime = "15"
            ds.RepetitionTime = "500"
            ds.MagneticFieldStrength = "1.5"
        if modality == "CT":
            ds.KVP = "120"
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
        _set_pixels(ds, pixels)
        _write(ds, folder / f"{modality}{i:06d}.dcm")


def _generate_tiny(folder: Path, count: int, rng: np.random.Generator) -> None:
    shape = (64, 64)
    base = _smooth_fields(rng, shape, 1)[0]
    study = _new_study(5000)
    for i in range(count):
        # 1000 files per subfolder, so that the first subfolder is the 1,000 set.
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        pixels = np.clip((base + 1.0) * 1000.0 + (i % 97), 0, 4095).astype(np.uint16)
        ds = _base_dataset(SECONDARY_CAPTURE_STORAGE, "OT", study)
        ds.ConversionType = "WSD"
        ds.InstanceNumber = i + 1
        _set_pixels(ds, pixels)
        _write(ds, sub / f"OT{i:06d}.dcm")


_GENERATORS = {
    "ct": _generate_ct,
    "small": _generate_small,
    "j2k": _generate_j2k,
    "tiny": _generate_tiny,
}
