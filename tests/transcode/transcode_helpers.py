"""Inputs for the transcode tests: corpus and pydicom files, reference pixels."""

from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from transcode.pixels import source_transfer_syntax

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS = PROJECT_ROOT / ".." / "shared" / "corpus" / "real"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

JPEG_SOURCES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}

# Files that no installed decoder reads, with the reason and the message
# that transcoding them to a syntax that needs decoding must give.
UNDECODABLE = {
    "pydicomdata_liver_deflate.dcm": (
        (
            "Deflated Image Frame Compression (1.2.840.10008.1.2.8.1) has no "
            "decoder in pydicom 3.0, and its 1-bit pixels fit no encapsulated "
            "syntax either"
        ),
        "no pydicom decoder exists|bit-packed",
    ),
    "JPEG2000-embedded-sequence-delimiter.dcm": (
        "deliberately malformed: a sequence delimiter inside the J2K fragments",
        "Unable to decode the pixel data",
    ),
    "MR_truncated.dcm": (
        "deliberately truncated Pixel Data",
        "Unable to decode the pixel data",
    ),
    "badVR.dcm": ("Rows is '1A', not a number", "Image Pixel module value is invalid"),
    "meta_missing_tsyntax.dcm": (
        "Pixel Data without an Image Pixel module", "Image Pixel module lacks",
    ),
    "nested_priv_SQ.dcm": (
        "Pixel Data without an Image Pixel module", "Image Pixel module lacks",
    ),
}


def _corpus_hashes() -> set[str]:
    manifest = CORPUS / "MANIFEST.tsv"
    lines = manifest.read_text().splitlines()[1:]
    return {line.split("\t")[3] for line in lines}


def _source_files() -> list[Path]:
    """Every corpus file, plus each pydicom test file not already in the corpus."""
    files = sorted(CORPUS.glob("*/*.dcm"))
    known = _corpus_hashes()
    for path in sorted(PYDICOM_FILES.glob("*.dcm")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in known:
            files.append(path)
    return files


SOURCE_FILES = _source_files()


@functools.cache
def read_source(path: Path) -> Dataset:
    """Read `path` once; tests must not modify the returned data set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


@functools.lru_cache(maxsize=8)
def reference_pixels(path: Path) -> np.ndarray:
    """Return the source pixels as (frames, rows, columns, samples).

    JPEG sources are decoded to RGB, every other source keeps its colour space
    (native YBR_FULL_422 is upsampled). pydicom decodes; the 12-bit JPEG
    Extended streams that libjpeg rejects (WG04 JPLY) are decoded with
    libjpeg-turbo.
    """
    ds = read_source(path)
    uid = source_transfer_syntax(ds)
    frames = int(ds.get("NumberOfFrames") or 1)
    shape = (frames, ds.Rows, ds.Columns, ds.SamplesPerPixel)
    try:
        array, _ = get_decoder(uid).as_array(ds, raw=uid not in JPEG_SOURCES)
    except Exception:
        if uid not in JPEG_SOURCES or ds.SamplesPerPixel != 1:
            raise
        encoded = generate_frames(ds.PixelData, number_of_frames=frames)
        array = np.stack([imagecodecs.jpeg8_decode(frame) for frame in encoded])
        # The lossy stream overshoots Bits Stored by a little; such values
        # are clipped to the top of the range.
        array = np.clip(array, 0, (1 << int(ds.BitsStored)) - 1)
    array = array.reshape(shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def decoded_photometric(ds: Dataset, uid: UID) -> str:
    """Return the Photometric Interpretation the pixels have once decoded."""
    photometric = str(ds.PhotometricInterpretation)
    if photometric in ("YBR_RCT", "YBR_ICT"):
        return "RGB"
    if photometric.startswith("YBR_FULL"):
        return "RGB" if uid in JPEG_SOURCES else "YBR_FULL"
    return photometric


def source_id(path: Path) -> str:
    return path.name
