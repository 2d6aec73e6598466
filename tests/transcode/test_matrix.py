"""Every lossless target against every real and pydicom sample file.

Each case checks that decoded pixels equal the source sample for sample in
every frame, that the pixel module matches the encoded bytes exactly, and that
data a target cannot represent gives the documented error.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from transcode_helpers import (
    SOURCE_FILES,
    UNDECODABLE,
    decoded_photometric,
    read_source,
    reference_pixels,
    source_id,
)

from transcode.errors import TranscodeError, UnsupportedTransferSyntaxError
from transcode.pixels import PIXEL_DATA_TAGS, source_transfer_syntax
from transcode.syntaxes import resolve_transfer_syntax
from transcode.transcoder import Transcoder
from transcode.verify import decode_dataset

LOSSLESS_TARGETS = [
    "ImplicitVRLittleEndian",
    "ExplicitVRLittleEndian",
    "DeflatedExplicitVRLittleEndian",
    "RLELossless",
    "JPEGLSLossless",
    "JPEG2000Lossless",
    "JPEGLossless",
    "JPEGLosslessSV1",
    "HTJ2KLossless",
    "HTJ2KLosslessRPCL",
]
NATIVE_TARGETS = LOSSLESS_TARGETS[:3]
LITTLE_ENDIAN_NATIVE = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
}
# Files above 1 MB of pixel data make a case take about a second.
LARGE = {"fodicom_HasFragmentSequence.dcm", "WG04_RG3_RLE.dcm", "WG04_RG3_JPLY.dcm",
         "ljdata_JPEG2KLossless_1s_1f_u_16_16.dcm", "WG04_XA1_JLSL.dcm",
         "ljdata_JPEGLossless_1s_1f_u_16_12.dcm",
         "ljdata_JPEGLosslessP14SV1_3s_2f_u_08_08.dcm"}


def expected_limit(target: str, ds: Dataset, uid: UID) -> str | None:
    """Return a regex for the error `target` must give for `ds`, or None if it fits.

    This restates the limits table of docs/transcoding.md.
    """
    if target in NATIVE_TARGETS:
        return None
    if "PixelData" not in ds:
        return r"cannot represent (FloatPixelData|DoubleFloatPixelData)"

    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    samples = int(ds.SamplesPerPixel)
    photometric = decoded_photometric(ds, uid)
    if allocated == 1:
        return r"cannot represent bit-packed pixels"
    if samples == 3 and signed:
        return r"cannot represent signed colour"

    def bits(allowed_allocated: tuple[int, ...], low: int, high: int) -> str | None:
        if allocated not in allowed_allocated:
            return rf"cannot represent Bits Allocated {allocated}"
        if not low <= stored <= high:
            return rf"cannot represent Bits Stored {stored}"
        return None

    ybr = photometric == "YBR_FULL"
    if target == "RLELossless":
        return bits((8,), 1, 8) if ybr else bits((8, 16), 1, 16)
    if target == "JPEGLSLossless":
        return bits((8,), 2, 8) if ybr else bits((8, 16), 2, 16)
    if target == "JPEG2000Lossless":
        return bits((8, 16, 24, 32), 1, 24)
    if target.startswith("HTJ2K"):
        return bits((8, 16), 1, 16)
    return bits((8, 16), 2, 16)  # JPEG Lossless .57 and .70


def _transcode_case(path: Path, target: str) -> None:
    ds = read_source(path)
    uid = source_transfer_syntax(ds)
    target_uid = resolve_transfer_syntax(target)
    has_pixels = any(tag in ds for tag in PIXEL_DATA_TAGS)
    copies_bytes = uid == target_uid or (
        uid in LITTLE_ENDIAN_NATIVE and target in NATIVE_TARGETS
    )

    # Objects without pixel data go in explicit VR when the target compresses.
    if not has_pixels:
        result = Transcoder(target).transcode(ds)
        expected = target_uid if target in NATIVE_TARGETS else ExplicitVRLittleEndian
        assert result.transfer_syntax == expected
        assert result.dataset.file_meta.TransferSyntaxUID == expected
        assert len(result.dataset_bytes()) > 0
        return

    if path.name in UNDECODABLE and not copies_bytes:
        _, message = UNDECODABLE[path.name]
        with pytest.raises(TranscodeError, match=message):
            Transcoder(target).transcode(ds)
        return

    limit = None if copies_bytes else expected_limit(target, ds, uid)
    if limit is not None:
        with pytest.raises(UnsupportedTransferSyntaxError, match=limit) as info:
            Transcoder(target).transcode(ds)
        assert "transfer syntaxes that can: " in str(info.value)
        return

    result = Transcoder(target).transcode(ds)
    out = result.dataset
    assert result.transfer_syntax == target_uid
    assert out.file_meta.TransferSyntaxUID == target_uid
    assert result.sop_instance_uid == ds.get("SOPInstanceUID", "")
    assert out.get("SOPInstanceUID") == ds.get("SOPInstanceUID")
    if "SOPInstanceUID" in ds:
        assert out.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    if copies_bytes:
        for tag in PIXEL_DATA_TAGS:
            if tag in ds:
                assert out[tag].value == ds[tag].value
        for keyword in ("PhotometricInterpretation", "PlanarConfiguration",
                        "BitsAllocated", "BitsStored", "PixelRepresentation"):
            assert out.get(keyword) == ds.get(keyword), keyword
        return

    _check_pixel_module(ds, out, uid)
    _check_pixels(path, out, target_uid)


def _check_pixel_module(ds: Dataset, out: Dataset, uid: UID) -> None:
    assert out.Rows == ds.Rows
    assert out.Columns == ds.Columns
    assert out.SamplesPerPixel == ds.SamplesPerPixel
    assert out.get("NumberOfFrames") == ds.get("NumberOfFrames")
    assert out.PhotometricInterpretation == decoded_photometric(ds, uid)
    assert out.BitsAllocated == ds.BitsAllocated
    if "PixelData" in ds:
        assert out.BitsStored == ds.BitsStored
        assert out.HighBit == ds.BitsStored - 1
        assert out.PixelRepresentation == ds.PixelRepresentation
    if ds.SamplesPerPixel > 1:
        assert out.PlanarConfiguration == 0
    else:
        assert "PlanarConfiguration" not in out


def _check_pixels(path: Path, out: Dataset, target_uid: UID) -> None:
    expected = reference_pixels(path)
    decoded = decode_dataset(out, target_uid, raw=True)
    assert decoded.shape == expected.shape
    for index in range(expected.shape[0]):
        same = np.array_equal(decoded[index], expected[index])
        assert same, f"frame {index} differs"


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize(
    "path", [p for p in SOURCE_FILES if p.name not in LARGE], ids=source_id
)
def test_lossless_target(path: Path, target: str) -> None:
    """Transcoding keeps every pixel, or raises the documented error."""
    _transcode_case(path, target)


@pytest.mark.slow
@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize(
    "path", [p for p in SOURCE_FILES if p.name in LARGE], ids=source_id
)
def test_lossless_target_large(path: Path, target: str) -> None:
    """Large and multi-frame sources keep every pixel in every target."""
    _transcode_case(path, target)


def test_undecodable_list_is_short() -> None:
    """Only a handful of sample files are unreadable, each for a stated reason."""
    names = {path.name for path in SOURCE_FILES}
    assert set(UNDECODABLE) <= names
    assert len(UNDECODABLE) <= 6
    for reason, message in UNDECODABLE.values():
        assert reason
        re.compile(message)
