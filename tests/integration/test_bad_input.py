"""Bad input: every broken file gets its own clear error or a counted skip.

Each case builds its input from pydicom's sample files in ``tmp_path``,
sends it to DCMTK's storescp (``+xa +uf``) and checks the counts, the exact
messages and what arrived. No case may stop the batch, and no input file
may change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pydicom
import pytest
from e2e_support import PYDICOM_TEST_FILES, load_receivers, read, received_files
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine import StoreScu

receivers = load_receivers()
pytestmark = pytest.mark.dcmtk

CT = PYDICOM_TEST_FILES / "CT_small.dcm"


@pytest.fixture
def scp(tmp_path: Path) -> Any:
    out = tmp_path / "scp"
    out.mkdir()
    with receivers.start_storescp(out, "+xa", "+uf") as running:
        yield running


def digests(folder: Path) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def send(port: int, paths: list[Path], **options: Any) -> tuple[Any, dict[str, str]]:
    scu = StoreScu(f"127.0.0.1:{port}", transcode_workers=1, **options)
    for path in paths:
        if path.is_dir():
            scu.add_directory(path)
        else:
            scu.add_file(path)
    errors: dict[str, str] = {}

    def on_file_error(err: Exception | None, event: Any) -> None:
        errors[Path(event.data["file"]).name] = event.data["error"]

    return scu.send(on_file_error=on_file_error), errors


def dataset_offset(data: bytes) -> int:
    """Return where the data set starts in a Part 10 file."""
    (meta_length,) = struct.unpack_from("<L", data, 128 + 4 + 8)
    return 128 + 4 + 12 + meta_length


def encode_raw(dataset: Dataset) -> bytes:
    """Return the data set in Explicit VR Little Endian without file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def test_broken_files_each_fail_alone(tmp_path: Path, scp: Any) -> None:
    """Truncations at every stage, missing UIDs and junk fail one by one."""
    folder = tmp_path / "in"
    folder.mkdir()
    whole = CT.read_bytes()
    start = dataset_offset(whole)
    cuts = {
        "cut_in_preamble.dcm": 100,
        "cut_in_meta.dcm": 140,
        "cut_in_dataset.dcm": start + 50,
        "cut_in_pixels.dcm": len(whole) // 2,
    }
    for name, length in cuts.items():
        (folder / name).write_bytes(whole[:length])
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "text.dcm").write_text("patient list\n")
    # Without file meta, so that no Media Storage SOP Instance UID stands in.
    no_uid = pydicom.dcmread(CT)
    del no_uid.SOPInstanceUID
    (folder / "no_instance_uid.dcm").write_bytes(encode_raw(no_uid))
    (folder / "good.dcm").write_bytes(whole)
    before = digests(folder)
    paths = sorted(folder.iterdir())

    result, errors = send(scp.port, paths)

    assert result.total_files == 8
    assert result.successful == 1
    assert result.failed == 7
    path = str(folder)
    assert errors == {
        "cut_in_preamble.dcm": (
            f"Unable to send '{path}/cut_in_preamble.dcm' as it is not a DICOM file: "
            "no DICM prefix and no SOP Class UID or SOP Instance UID could be read"),
        "cut_in_meta.dcm": (
            f"Unable to send '{path}/cut_in_meta.dcm' as the file ends inside its "
            "file meta information; the file is truncated"),
        "cut_in_dataset.dcm": (
            f"Unable to send '{path}/cut_in_dataset.dcm' as the file ends inside "
            "the header of the element after (0008,0008) ImageType; it is "
            "truncated, so copy it again from its source"),
        "cut_in_pixels.dcm": (
            f"Unable to send '{path}/cut_in_pixels.dcm' as the file ends inside "
            "the value of (7FE0,0010) PixelData; it is truncated, so copy it again "
            "from its source"),
        "empty.dcm": f"Unable to send '{path}/empty.dcm' as the file is empty",
        "text.dcm": (
            f"Unable to send '{path}/text.dcm' as it is not a DICOM file: no DICM "
            "prefix and no SOP Class UID or SOP Instance UID could be read"),
        "no_instance_uid.dcm": (
            f"Unable to send '{path}/no_instance_uid.dcm' as it has no SOP Instance "
            "UID (0008,0018); add the element before sending"),
    }
    assert len(received_files(scp.out_dir)) == 1
    assert digests(folder) == before


def test_directory_skips_clutter(tmp_path: Path, scp: Any) -> None:
    """A directory walk skips and counts non-DICOM files and DICOMDIRs."""
    folder = tmp_path / "in"
    shutil.copytree(PYDICOM_TEST_FILES / "dicomdirtests" / "TINY_ALPHA", folder)
    (folder / "empty").write_bytes(b"")
    (folder / "notes.txt").write_text("not DICOM")
    sendable = [path for path in folder.rglob("IM*")]

    result, errors = send(scp.port, [folder])

    assert errors == {}
    assert result.skipped == 4  # DICOMDIR, README, empty, notes.txt
    assert result.successful == len(sendable)
    assert len(received_files(scp.out_dir)) == len(sendable)


def test_unusual_but_valid_files(tmp_path: Path, scp: Any) -> None:
    """Raw data sets, a junk preamble and empty pixel data are sent as they are."""
    folder = tmp_path / "in"
    folder.mkdir()
    whole = CT.read_bytes()
    start = dataset_offset(whole)
    dataset = read(CT)
    (folder / "junk_preamble.dcm").write_bytes(os.urandom(128) + whole[128:])
    (folder / "raw_explicit").write_bytes(whole[start:])
    implicit = Dataset()
    implicit.update(dataset)
    implicit.SOPInstanceUID = pydicom.uid.generate_uid()
    implicit.save_as(folder / "raw_implicit", implicit_vr=True, little_endian=True)
    empty = pydicom.dcmread(CT)
    empty.SOPInstanceUID = pydicom.uid.generate_uid()
    empty.file_meta.MediaStorageSOPInstanceUID = empty.SOPInstanceUID
    empty.PixelData = b""
    empty.save_as(folder / "empty_pixels.dcm")
    before = digests(folder)

    result, errors = send(scp.port, sorted(folder.iterdir()))

    assert errors == {}
    assert result.successful == 4
    stored = {str(read(path).SOPInstanceUID): read(path)
              for path in received_files(scp.out_dir)}
    assert stored[implicit.SOPInstanceUID].PatientName == dataset.PatientName
    assert stored[empty.SOPInstanceUID].PixelData in (b"", None)
    assert digests(folder) == before


def test_objects_without_pixels_forced_compressed(tmp_path: Path, scp: Any) -> None:
    """SR, RT Plan and RT Structure Set go uncompressed under a JPEG 2000 target."""
    names = ("test-SR.dcm", "rtplan.dcm", "rtstruct.dcm")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        shutil.copy(PYDICOM_TEST_FILES / name, folder / name)

    result, errors = send(scp.port, sorted(folder.iterdir()),
                          transfer_syntax="JPEG2000Lossless")

    assert errors == {}
    assert result.successful == 3
    stored = received_files(scp.out_dir)
    assert {str(read(path).file_meta.TransferSyntaxUID) for path in stored} == {
        ExplicitVRLittleEndian}


def test_odd_length_value_padded(tmp_path: Path, scp: Any) -> None:
    """A value of odd length arrives padded to even length, its content kept."""
    dataset = pydicom.dcmread(CT)
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    block = dataset.private_block(0x0099, "ODD LENGTH TEST", create=True)
    block.add_new(0x01, "OB", b"\x01\x02\x03\x04")
    source = tmp_path / "odd.dcm"
    dataset.save_as(source)
    # pydicom pads what it writes, so make the value odd afterwards.
    even = b"\x99\x00\x01\x10OB\x00\x00\x04\x00\x00\x00\x01\x02\x03\x04"
    raw = source.read_bytes()
    assert raw.count(even) == 1
    raw = raw.replace(even, b"\x99\x00\x01\x10OB\x00\x00\x03\x00\x00\x00\x01\x02\x03")
    source.write_bytes(raw)

    result, errors = send(scp.port, [source])

    assert errors == {}
    assert result.successful == 1
    (stored,) = received_files(scp.out_dir)
    copy = read(stored)
    assert copy[0x0099_1001].value == b"\x01\x02\x03\x00"
    assert source.read_bytes() == raw


def test_implicit_private_forced_explicit(tmp_path: Path, scp: Any) -> None:
    """Private elements and sequences of an implicit file survive an explicit target."""
    dataset = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small_implicit.dcm")
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    block = dataset.private_block(0x0043, "PRIVATE TEST", create=True)
    block.add_new(0x10, "LO", "private text")
    item = Dataset()
    item.add_new(0x0043_0010, "LO", "PRIVATE TEST")
    item.add_new(0x0043_1011, "DS", "1.5")
    block.add_new(0x12, "SQ", [item])
    source = tmp_path / "implicit.dcm"
    dataset.save_as(source, implicit_vr=True)

    result, errors = send(scp.port, [source], transfer_syntax="ExplicitVRLittleEndian")

    assert errors == {}
    assert result.successful == 1
    (stored,) = received_files(scp.out_dir)
    copy = pydicom.dcmread(stored)
    assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert copy[0x0043_1010].VR in ("LO", "UN")
    assert copy[0x0043_1010].value in ("private text", b"private text")
    sequence = copy[0x0043_1012]
    assert sequence.VR in ("SQ", "UN")
    assert b"1.5" in (sequence.value if sequence.VR == "UN"
                      else str(sequence.value[0][0x0043_1011].value).encode())


@pytest.mark.parametrize("target", [None, ImplicitVRLittleEndian])
def test_non_ascii_names_and_charsets(tmp_path: Path, scp: Any,
                                      target: str | None) -> None:
    """Non-ASCII file names and UTF-8 / ISO 2022 values arrive unchanged."""
    folder = tmp_path / "Ñandú 患者"
    folder.mkdir()
    values = {"ISO_IR 192": "Ñandú^患者", "ISO 2022 IR 87": "Yamada^Tarou=山田^太郎"}
    uids = {}
    for index, (charset, name) in enumerate(values.items()):
        dataset = pydicom.dcmread(CT)
        dataset.SOPInstanceUID = uids[charset] = pydicom.uid.generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SpecificCharacterSet = charset if index == 0 else ["", charset]
        dataset.PatientName = name
        dataset.save_as(folder / f"患者-{index}.dcm")
    # A name that is not valid UTF-8, as found on old file systems.
    os.rename(folder / "患者-1.dcm", os.fsdecode(os.fsencode(folder) + b"/\xff\xfe.dcm"))

    result, errors = send(scp.port, [folder], transfer_syntax=target)

    assert errors == {}
    assert result.successful == 2
    stored = {str(read(path).SOPInstanceUID): read(path)
              for path in received_files(scp.out_dir)}
    assert str(stored[uids["ISO_IR 192"]].PatientName) == values["ISO_IR 192"]
    assert str(stored[uids["ISO 2022 IR 87"]].PatientName) == values["ISO 2022 IR 87"]


def test_files_changed_during_batch(tmp_path: Path, scp: Any) -> None:
    """Files deleted, truncated or replaced after being added fail alone."""
    folder = tmp_path / "in"
    folder.mkdir()
    whole = CT.read_bytes()
    for name in ("deleted.dcm", "truncated.dcm", "replaced.dcm", "kept.dcm"):
        (folder / name).write_bytes(whole)
    other = pydicom.dcmread(CT)
    del other.PatientName
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.save_as(tmp_path / "other.dcm")

    scu = StoreScu(f"127.0.0.1:{scp.port}", start_method="fork")
    for path in sorted(folder.iterdir()):
        scu.add_file(path)
    errors: dict[str, str] = {}

    def change_files(err: Exception | None, event: Any) -> None:
        (folder / "deleted.dcm").unlink()
        (folder / "truncated.dcm").write_bytes(whole[:len(whole) // 2])
        shutil.copy(tmp_path / "other.dcm", folder / "replaced.dcm")

    def on_file_error(err: Exception | None, event: Any) -> None:
        errors[Path(event.data["file"]).name] = event.data["error"]

    result = scu.send(on_transfer_started=change_files, on_file_error=on_file_error)

    assert result.successful == 1
    assert result.failed == 3
    path = str(folder)
    assert errors["deleted.dcm"].startswith(
        f"Unable to send '{path}/deleted.dcm' as it can no longer be read")
    assert "the value of (7FE0,0010) PixelData; it is truncated" in (
        errors["truncated.dcm"])
    assert errors["replaced.dcm"] == (
        f"Unable to send '{path}/replaced.dcm' as it was replaced by another object "
        "after it was added; add it again")
    assert len(received_files(scp.out_dir)) == 1
