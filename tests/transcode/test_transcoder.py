"""The public interface: names, results, wire bytes, file meta, untouched elements."""

from __future__ import annotations

import copy
import zlib
from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from transcode_helpers import CORPUS, PYDICOM_FILES, read_source, reference_pixels

import transcode
from transcode.errors import TranscodeError
from transcode.syntaxes import TRANSFER_SYNTAX_NAMES, resolve_transfer_syntax
from transcode.transcoder import Transcoder
from transcode.verify import decode_dataset

CT = CORPUS / "wg04" / "WG04_CT1_UNC.dcm"


@pytest.mark.parametrize(("name", "uid"), [
    ("JPEGBaseline", "1.2.840.10008.1.2.4.50"),
    ("JPEGBaseline8Bit", "1.2.840.10008.1.2.4.50"),
    ("JPEGExtended", "1.2.840.10008.1.2.4.51"),
    ("JPEGLossless", "1.2.840.10008.1.2.4.57"),
    ("JPEGLosslessSV1", "1.2.840.10008.1.2.4.70"),
    ("jpeglslossless", "1.2.840.10008.1.2.4.80"),
    ("HTJ2KLosslessRPCL", "1.2.840.10008.1.2.4.202"),
    ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.5"),
])
def test_resolve_names(name: str, uid: str) -> None:
    """Keywords, aliases and UIDs resolve to the UID."""
    assert resolve_transfer_syntax(name) == uid


def test_resolve_unknown_lists_names() -> None:
    """An unknown name raises ValueError listing the valid names."""
    with pytest.raises(ValueError, match=r"Unknown transfer syntax 'JPEG9'.*"
                                         r"ExplicitVRLittleEndian.*JPEGBaseline"):
        resolve_transfer_syntax("JPEG9")


@pytest.mark.parametrize("name", ["ExplicitVRBigEndian", "1.2.840.10008.1.2.2"])
def test_big_endian_is_no_target(name: str) -> None:
    """Explicit VR Big Endian is refused as a target as retired."""
    with pytest.raises(ValueError, match="retired and is accepted only as input"):
        Transcoder(name)


def test_names_cover_pydicom_keywords() -> None:
    """Every name in TRANSFER_SYNTAX_NAMES is a pydicom keyword or a listed alias."""
    # pydicom 3.0 predates DeflatedImageFrameCompression.
    not_in_pydicom = ("JPEGBaseline", "JPEGExtended", "DeflatedImageFrameCompression")
    for name, uid in TRANSFER_SYNTAX_NAMES.items():
        if name in not_in_pydicom:
            continue
        assert getattr(pydicom.uid, name) == uid


def test_needs_transcoding() -> None:
    """Only a file already in the target syntax can go as it is."""
    transcoder = Transcoder("RLELossless")
    assert not transcoder.needs_transcoding(RLELossless)
    assert transcoder.needs_transcoding(ExplicitVRLittleEndian)
    explicit = Transcoder("ExplicitVRLittleEndian")
    assert explicit.needs_transcoding(ImplicitVRLittleEndian)


def test_package_exports() -> None:
    """The package root re-exports the public names."""
    assert transcode.Transcoder is Transcoder
    assert issubclass(transcode.LossyNotAllowedError, transcode.TranscodeError)
    assert issubclass(transcode.UnsupportedTransferSyntaxError, TranscodeError)


def test_no_pixel_data_goes_explicit() -> None:
    """An object without pixel data and a compressed target comes out explicit VR LE."""
    ds = read_source(CORPUS / "pydicom" / "pydicom_rtplan.dcm")

    result = Transcoder("JPEGBaseline", allow_lossy=True).transcode(ds)

    assert result.transfer_syntax == ExplicitVRLittleEndian
    assert result.dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not result.lossy
    assert result.sop_instance_uid == ds.SOPInstanceUID


def test_source_is_not_modified() -> None:
    """transcode leaves its input data set as it was."""
    ds = read_source(CT)
    before = copy.deepcopy(ds)

    Transcoder("JPEG2000Lossless", verify=True).transcode(ds)

    assert ds == before
    assert ds.file_meta == before.file_meta


def test_other_elements_are_kept() -> None:
    """Every element outside the pixel module keeps its value, sequences included."""
    ds = read_source(CORPUS / "fo-dicom" / "fodicom_JPEGwithIcon.dcm")

    result = Transcoder("RLELossless").transcode(ds)

    out = result.dataset
    changed = {"PixelData", "PhotometricInterpretation", "PlanarConfiguration"}
    for elem in ds:
        if elem.keyword in changed:
            continue
        assert out[elem.tag].value == elem.value, elem.keyword
    assert out.IconImageSequence[0].PixelData == ds.IconImageSequence[0].PixelData
    assert out.PhotometricInterpretation == "RGB"


def test_big_endian_source() -> None:
    """Explicit VR Big Endian input comes out with the same pixels as its LE twin."""
    big = read_source(PYDICOM_FILES / "MR_small_bigendian.dcm")
    little = read_source(PYDICOM_FILES / "MR_small.dcm")

    result = Transcoder("ExplicitVRLittleEndian").transcode(big)

    assert result.dataset.PixelData == little.PixelData
    assert result.dataset.PixelRepresentation == 1
    again = pydicom.dcmread(BytesIO(_as_file(result)))
    assert np.array_equal(again.pixel_array, little.pixel_array)


def test_missing_file_meta() -> None:
    """A data set read without file meta gets complete file meta."""
    ds = read_source(CORPUS / "fo-dicom" / "fodicom_CR-MONO1-10-chest.dcm")
    assert "TransferSyntaxUID" not in getattr(ds, "file_meta", {})

    result = Transcoder("JPEGLSLossless").transcode(ds)

    meta = result.dataset.file_meta
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.ImplementationClassUID == pydicom.uid.PYDICOM_IMPLEMENTATION_UID


@pytest.mark.parametrize("target", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    RLELossless])
def test_dataset_bytes_round_trip(target: str) -> None:
    """dataset_bytes has no preamble or file meta and reads back in its syntax."""
    ds = read_source(CT)
    result = Transcoder(target).transcode(ds)

    data = result.dataset_bytes()

    assert not data.startswith(b"\x02\x00")
    assert b"DICM" not in data[:200]
    implicit = target == ImplicitVRLittleEndian
    again = read_dataset(BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    again.file_meta = result.dataset.file_meta
    assert np.array_equal(decode_dataset(again, target), reference_pixels(CT))


def test_dataset_bytes_deflated() -> None:
    """The deflated syntax sends the explicit VR LE bytes through raw deflate."""
    result = Transcoder(DeflatedExplicitVRLittleEndian).transcode(read_source(CT))
    explicit = Transcoder(ExplicitVRLittleEndian).transcode(read_source(CT))

    data = result.dataset_bytes()

    assert len(data) % 2 == 0
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
    assert inflated == explicit.dataset_bytes()
    assert len(data) < len(inflated)


def test_saved_file_reads_back() -> None:
    """The result dataset saves as a file pydicom reads in the target syntax."""
    result = Transcoder(JPEGBaseline8Bit, allow_lossy=True).transcode(
        read_source(CORPUS / "wg04" / "WG04_US1_UNC.dcm")
    )

    again = pydicom.dcmread(BytesIO(_as_file(result)))

    assert again.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert again.pixel_array.shape == (480, 640, 3)


def test_verify_passes_on_real_ct() -> None:
    """verify=True accepts a correct lossless result."""
    result = Transcoder("JPEGLosslessSV1", verify=True).transcode(read_source(CT))
    assert result.compression_ratio > 1.5


def _as_file(result: transcode.TranscodeResult) -> bytes:
    buffer = BytesIO()
    result.dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
