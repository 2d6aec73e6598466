"""Unit tests of engine.header: reading the UIDs and syntax a C-STORE needs."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from engine.errors import InvalidDicomFileError, NotDicomError
from engine.header import read_header

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
