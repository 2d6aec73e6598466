"""Unit tests of engine.header: reading the UIDs and syntax a C-STORE needs."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from engine.errors import InvalidDicomFileError, NotDicomError
from engine.header import (
    PixelDataKind,
    check_dataset,
    check_dataset_file,
    read_header,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def encode(dataset: Dataset, *, with_meta: bool, implicit: bool = False) -> bytes:
    buffer = io.BytesIO()
    if with_meta:
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                               else ExplicitVRLittleEndian)
    dataset.save_as(buffer, implicit_vr=implicit, little_endian=True,
                    enforce_file_format=with_meta)
    return buffer.getvalue()


def sample() -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = generate_uid()
    dataset.PatientName = "Test^Header"
    return dataset


def test_part10_file() -> None:
    dataset = sample()
    data = encode(dataset, with_meta=True)
    header = read_header(io.BytesIO(data), "part10.dcm")
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    assert header.sop_instance_uid == dataset.SOPInstanceUID
    assert header.transfer_syntax == ExplicitVRLittleEndian
    assert header.has_file_meta
    assert data[header.dataset_offset:header.dataset_offset + 4] == b"\x08\x00\x16\x00"
    assert not header.is_dicomdir


@pytest.mark.parametrize("implicit", [True, False])
def test_raw_data_set(implicit: bool) -> None:
    dataset = sample()
    data = encode(dataset, with_meta=False, implicit=implicit)
    header = read_header(io.BytesIO(data), "raw")
    assert header.sop_instance_uid == dataset.SOPInstanceUID
    assert header.transfer_syntax == (ImplicitVRLittleEndian if implicit
                                      else ExplicitVRLittleEndian)
    assert header.dataset_offset == 0
    assert not header.has_file_meta


def test_real_file_without_meta() -> None:
    path = TEST_FILES / "rtstruct.dcm"
    with path.open("rb") as fileobj:
        header = read_header(fileobj, str(path))
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.481.3"


def test_dicomdir() -> None:
    path = TEST_FILES / "dicomdirtests" / "DICOMDIR"
    with path.open("rb") as fileobj:
        assert read_header(fileobj, str(path)).is_dicomdir


def test_empty_file() -> None:
    with pytest.raises(NotDicomError,
                       match=r"Unable to send 'e\.dcm' as the file is empty"):
        read_header(io.BytesIO(b""), "e.dcm")


def test_text_file() -> None:
    with pytest.raises(NotDicomError, match=r"Unable to send 'notes\.txt'"):
        read_header(io.BytesIO(b"just some words\n" * 20), "notes.txt")


def test_truncated_meta() -> None:
    data = encode(sample(), with_meta=True)
    with pytest.raises(InvalidDicomFileError,
                       match=r"Unable to send 'cut\.dcm' as the file ends inside its "
                             r"file meta information"):
        read_header(io.BytesIO(data[:150]), "cut.dcm")


def test_missing_instance_uid() -> None:
    dataset = sample()
    del dataset.SOPInstanceUID
    data = encode(dataset, with_meta=False)
    with pytest.raises(InvalidDicomFileError,
                       match=r"has no SOP Instance UID \(0008,0018\)"):
        read_header(io.BytesIO(data), "no-uid")


# The data set walk


def part10(name: str) -> tuple[bytes, int, str]:
    """Return a sample's bytes, where its data set starts and its syntax."""
    data = (TEST_FILES / name).read_bytes()
    header = read_header(io.BytesIO(data), name, check=False)
    return data, header.dataset_offset, header.transfer_syntax


@pytest.mark.parametrize("name, kind", [
    ("CT_small.dcm", PixelDataKind.NATIVE),
    ("MR_small_RLE.dcm", PixelDataKind.ENCAPSULATED),
    ("MR_small_implicit.dcm", PixelDataKind.NATIVE),
    ("MR_small_bigendian.dcm", PixelDataKind.NATIVE),
    ("rtplan.dcm", PixelDataKind.NONE),
    ("UN_sequence.dcm", PixelDataKind.NONE),
])
def test_layout_of_samples(name: str, kind: PixelDataKind) -> None:
    data, offset, syntax = part10(name)
    layout = check_dataset(data[offset:], syntax, name)
    assert layout.pixel_data is kind
    assert layout.length == len(data) - offset
    assert layout.odd_length_tags == ()
    with (TEST_FILES / name).open("rb") as fileobj:
        assert read_header(fileobj, name).layout == layout
    assert check_dataset_file(TEST_FILES / name, offset, syntax, name) == layout


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_every_cut_in_encapsulated_pixels(name: str) -> None:
    """Cut anywhere after the pixel data header starts, a file is truncated."""
    data, offset, syntax = part10(name)
    pixel_start = data.rindex(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    # Up to the sequence delimitation item; trailing padding may follow it.
    pixel_end = data.index(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", pixel_start) + 8
    for cut in range(pixel_start + 1, pixel_end, 3):
        with pytest.raises(InvalidDicomFileError, match="it is truncated"):
            check_dataset(data[offset:cut], syntax, name)


def test_every_cut_in_native_pixels() -> None:
    data, offset, syntax = part10("CT_small.dcm")
    pixel_start = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00")
    for cut in range(pixel_start + 1, pixel_start + 2000):
        with pytest.raises(InvalidDicomFileError, match=(
                r"ends inside the (value|header) of (the element after \(0043,104E\)"
                r"|\(7FE0,0010\) PixelData); it is truncated")):
            check_dataset(data[offset:cut], syntax, "ct.dcm")


def test_cut_in_undefined_length_sequence() -> None:
    data, offset, syntax = part10("rtplan.dcm")
    dataset = pydicom.dcmread(TEST_FILES / "rtplan.dcm")
    assert dataset.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    with pytest.raises(InvalidDicomFileError,
                       match=r"'plan' as the file ends inside .*; it is truncated"):
        check_dataset(data[offset:len(data) - 10], syntax, "plan")


def test_odd_length_values_listed() -> None:
    dataset = sample()
    dataset.add_new(0x0009_0010, "LO", "ODD TEST")
    dataset.add_new(0x0009_1001, "OB", b"\x01\x02\x04\x05")
    data = encode(dataset, with_meta=False)
    even = b"OB\x00\x00\x04\x00\x00\x00\x01\x02\x04\x05"
    odd = data.replace(even, b"OB\x00\x00\x03\x00\x00\x00\x01\x02\x04")
    layout = check_dataset(odd, ExplicitVRLittleEndian, "odd")
    assert layout.odd_length_tags == (0x0009_1001,)
    assert layout.has_odd_lengths


def test_invalid_vr_and_stray_item() -> None:
    data = encode(sample(), with_meta=False)
    with pytest.raises(InvalidDicomFileError,
                       match=r"not valid DICOM: .*where an element was expected"):
        check_dataset(data + b"\xfe\xff\x00\xe0\x00\x00\x00\x00",
                      ExplicitVRLittleEndian, "stray")
    # The second element: a wrong VR on the first reads as implicit VR.
    second = 8 + int.from_bytes(data[6:8], "little")
    broken = data[:second + 4] + b"zz" + data[second + 6:]
    with pytest.raises(InvalidDicomFileError, match=r"has the invalid VR b'zz'"):
        check_dataset(broken, ExplicitVRLittleEndian, "vr")


def test_data_set_uids_win_over_meta() -> None:
    """A data set whose UIDs differ from its file meta is sent under its own."""
    dataset = sample()
    data = encode(dataset, with_meta=True)
    meta_uid = dataset.SOPInstanceUID.encode()
    other = pydicom.uid.generate_uid().encode()[:len(meta_uid)].ljust(len(meta_uid),
                                                                       b"1")
    position = data.rindex(meta_uid)
    changed = data[:position] + other + data[position + len(meta_uid):]
    header = read_header(io.BytesIO(changed), "changed")
    assert header.sop_instance_uid == other.decode()
