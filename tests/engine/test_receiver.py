"""Tests of engine.receiver.StorageReceiver against real senders on loopback.

Two senders are used. pynetdicom's AE, with
``_config.STORE_SEND_CHUNKED_DATASET``, sends a file's data set bytes without
decoding them, so the stored file must match the source byte for byte.
DCMTK's storescu re-encodes what it sends, so the stored file must match the
source element by element and pixel by pixel.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    SecondaryCaptureImageStorage,
    Verification,
)

from engine import receiver as receiver_module
from engine.pynetdicom_guard import install_reactor_guard
from engine.receiver import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    StorageReceiver,
    is_valid_uid,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS = PROJECT_ROOT / ".." / "shared" / "corpus" / "real"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
STORESCU = Path("/usr/bin/storescu")
ECHOSCU = Path("/usr/bin/echoscu")

# One file per transfer syntax (and a few without pixel data), from pydicom's
# test files and the corpus.
SOURCE_FILES = [
    PYDICOM_FILES / "CT_small.dcm",  # Explicit VR Little Endian
    PYDICOM_FILES / "MR_small_implicit.dcm",  # Implicit VR Little Endian
    PYDICOM_FILES / "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    PYDICOM_FILES / "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline
    PYDICOM_FILES / "JPGExtended.dcm",  # JPEG Extended
    CORPUS / "pylibjpeg-data" / "ljdata_JPEGLossless_1s_1f_u_16_12.dcm",  # Process 14
    CORPUS / "wg04" / "WG04_CT1_JPLL.dcm",  # JPEG Lossless SV1
    PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    PYDICOM_FILES / "JPEGLSNearLossless_08.dcm",  # JPEG-LS Near-Lossless
    PYDICOM_FILES / "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    CORPUS / "wg04" / "WG04_CT1_J2KI.dcm",  # JPEG 2000
    CORPUS / "pydicom-data" / "pydicomdata_HTJ2KLossless_08_RGB.dcm",  # HTJ2K
    CORPUS / "wg04" / "WG04_NM1_RLE.dcm",  # RLE Lossless
    PYDICOM_FILES / "SC_rgb_rle_16bit_2frame.dcm",  # RLE, 2 frames
    CORPUS / "highdicom" / "highdicom_sm_image_jpegls.dcm",  # multi-frame WSI
    PYDICOM_FILES / "waveform_ecg.dcm",  # no pixel data
    PYDICOM_FILES / "rtplan.dcm",  # no pixel data, implicit
    CORPUS / "dcmqi" / "dcmqi_sr-example_rwvm.dcm",  # no pixel data
]

# Without the corpus beside the repository its files are left out, except
# under CI, where they must be there.
if not CORPUS.is_dir() and os.environ.get("CI", "").lower() != "true":
    SOURCE_FILES = [path for path in SOURCE_FILES if CORPUS not in path.parents]

# DCMTK 3.6.7 predates High-Throughput JPEG 2000 and cannot send it.
DCMTK_SOURCE_FILES = [path for path in SOURCE_FILES if "HTJ2K" not in path.name]


@pytest.fixture(autouse=True)
def reactor_guard() -> None:
    """The tests send with pynetdicom from the test thread, so they need it."""
    install_reactor_guard()


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An output directory two levels below tmp_path, so ../../x stays inside it."""
    return tmp_path / "level" / "out"


@pytest.fixture
def receiver(out_dir: Path) -> Iterator[StorageReceiver]:
    with StorageReceiver(out_dir, port=0) as running:
        yield running


def _split_file(path: Path) -> tuple[FileMetaDataset, bytes]:
    """Return a Part 10 file's meta and the data set bytes that follow it."""
    file_meta, offset = split_dataset(path)
    return file_meta, path.read_bytes()[offset:]


def _ae(contexts: Sequence[tuple[str, str]], ae_title: str = "STORE-SCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 10
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    for abstract_syntax, transfer_syntax in sorted(set(contexts)):
        ae.add_requested_context(abstract_syntax, transfer_syntax)
    return ae


def _stored_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.iterdir()) if out_dir.exists() else []


def _assert_meta(stored: Dataset, sop_class: str, sop_instance: str, ts: str) -> None:
    meta = stored.file_meta
    assert stored.preamble == b"\x00" * 128
    assert meta.MediaStorageSOPClassUID == sop_class
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert meta.TransferSyntaxUID == ts, f"transfer syntax of {sop_instance}"
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.FileMetaInformationVersion == b"\x00\x01"


# Data Set Trailing Padding (FFFC,FFFC), which carries no data. storescu drops it.
TRAILING_PADDING = 0xFFFCFFFC


def _assert_same_elements(stored: Dataset, source: Dataset, path: Path) -> None:
    stored_tags = [element.tag for element in stored if element.tag != TRAILING_PADDING]
    source_tags = [element.tag for element in source if element.tag != TRAILING_PADDING]
    assert stored_tags == source_tags, f"element tags differ for '{path}'"
    for tag in source_tags:
        assert stored[tag].value == source[tag].value, f"{tag} differs for '{path}'"


def _assert_same_pixels(stored: Dataset, source: Dataset, path: Path) -> None:
    if "PixelData" not in source:
        return
    assert np.array_equal(stored.pixel_array, source.pixel_array), (
        f"pixels differ for '{path}'"
    )


@pytest.mark.parametrize("source_path", SOURCE_FILES, ids=lambda path: path.name)
def test_pynetdicom_file_stored_unchanged(
    receiver: StorageReceiver,
    out_dir: Path,
    source_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A data set sent without decoding is written byte for byte."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    source_meta, source_bytes = _split_file(source_path)
    sop_class = source_meta.MediaStorageSOPClassUID
    sop_instance = source_meta.MediaStorageSOPInstanceUID
    transfer_syntax = source_meta.TransferSyntaxUID

    ae = _ae([(sop_class, transfer_syntax)])
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="DICOMSEND")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(source_path)
    finally:
        assoc.release()

    assert status.Status == 0x0000
    target = out_dir / f"{sop_instance}.dcm"
    assert _stored_files(out_dir) == [target]
    stored_meta, stored_bytes = _split_file(target)
    assert stored_bytes == source_bytes
    stored = dcmread(target)
    _assert_meta(stored, sop_class, sop_instance, transfer_syntax)
    assert stored_meta.SourceApplicationEntityTitle == "STORE-SCU"
    assert receiver.stored_count == 1


def _storescu_config(files: Sequence[Path], path: Path) -> str:
    """Write a storescu profile with one context per (SOP class, syntax) pair."""
    pairs = set()
    for file in files:
        meta, _ = _split_file(file)
        pairs.add((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID))
    syntaxes = sorted({syntax for _, syntax in pairs})

    lines = ["[[TransferSyntaxes]]"]
    for index, syntax in enumerate(syntaxes):
        lines += [f"[TS{index}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for number, (sop_class, syntax) in enumerate(sorted(pairs), start=1):
        lines.append(
            f"PresentationContext{number} = {sop_class}\\TS{syntaxes.index(syntax)}"
        )
    lines += ["[[Profiles]]", "[Receiver]", "PresentationContexts = Contexts", ""]
    path.write_text("\n".join(lines))
    return "Receiver"


def _run_storescu(arguments: Sequence[str]) -> subprocess.CompletedProcess[str]:
    if not STORESCU.exists():
        pytest.skip(f"DCMTK storescu not found at {STORESCU}")
    return subprocess.run(
        [str(STORESCU), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.dcmtk
def test_storescu_directory_stored_intact(
    receiver: StorageReceiver, out_dir: Path, tmp_path: Path
) -> None:
    """Files scanned and sent by DCMTK storescu keep their elements and pixels."""
    source_dir = tmp_path / "sources"
    source_dir.mkdir()
    for source in DCMTK_SOURCE_FILES:
        (source_dir / source.name).symlink_to(source.resolve())
    config = tmp_path / "storescu.cfg"
    profile = _storescu_config(DCMTK_SOURCE_FILES, config)

    result = _run_storescu(
        [
            "-xf", str(config), profile,
            "+sd", "+r",
            "-aet", "STORE-SCU",
            "-aec", "DICOMSEND",
            "127.0.0.1", str(receiver.port),
            str(source_dir),
        ]
    )

    assert result.returncode == 0, result.stderr + result.stdout
    assert receiver.stored_count == len(DCMTK_SOURCE_FILES)
    assert receiver.failed_count == 0
    # Some sources share a SOP Instance UID (the MR_small files are one image
    # in several syntaxes), so each is found by UID and transfer syntax.
    stored_by_key = {}
    for target in _stored_files(out_dir):
        meta, _ = _split_file(target)
        key = (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID)
        assert key not in stored_by_key, f"{key} stored twice"
        stored_by_key[key] = target
    for source_path in DCMTK_SOURCE_FILES:
        source = dcmread(source_path)
        syntax = source.file_meta.TransferSyntaxUID
        target = stored_by_key.get((source.SOPInstanceUID, syntax))
        assert target is not None, f"'{source_path}' was not stored in {syntax.name}"
        name_pattern = rf"{re.escape(source.SOPInstanceUID)}(_\d+)?\.dcm"
        assert re.fullmatch(name_pattern, target.name)
        stored = dcmread(target)
        _assert_meta(stored, source.SOPClassUID, source.SOPInstanceUID, syntax)
        _assert_same_elements(stored, source, source_path)
        _assert_same_pixels(stored, source, source_path)


@pytest.mark.dcmtk
def test_storescu_file_without_meta(
    receiver: StorageReceiver, out_dir: Path
) -> None:
    """A data set without file meta gets a complete file meta on disk."""
    source_path = CORPUS / "fo-dicom" / "fodicom_CR-MONO1-10-chest.dcm"
    if not source_path.is_file() and os.environ.get("CI", "").lower() != "true":
        pytest.skip(f"the corpus file '{source_path}' is not beside the repository")
    source = dcmread(source_path, force=True)
    source.file_meta = FileMetaDataset()
    source.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    result = _run_storescu(
        ["-R", "-xi", "127.0.0.1", str(receiver.port), str(source_path)]
    )

    assert result.returncode == 0, result.stderr + result.stdout
    stored = dcmread(out_dir / f"{source.SOPInstanceUID}.dcm")
    _assert_meta(
        stored, source.SOPClassUID, source.SOPInstanceUID, ImplicitVRLittleEndian
    )
    _assert_same_elements(stored, source, source_path)
    _assert_same_pixels(stored, source, source_path)


def _dataset(sop_instance_uid: str, sop_class_uid: str = CTImageStorage) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.PatientName = "Receiver^Test"
    return ds


@pytest.mark.parametrize(
    "bad_uid",
    ["../../x", "1.2/3", "1.2\x003", "..", "1..2", "1.2.", "/etc/passwd"],
    ids=["parent", "slash", "nul", "dotdot", "empty-part", "trailing-dot", "absolute"],
)
def test_invalid_instance_uid_rejected(
    receiver: StorageReceiver,
    out_dir: Path,
    tmp_path: Path,
    bad_uid: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SOP Instance UID that is not a DICOM UID gets 0xC000 and no file.

    A UID over 64 characters cannot be tested here because pynetdicom
    raises ValueError when it encodes one. test_is_valid_uid covers the
    length limit.
    """
    caplog.set_level(logging.ERROR, logger="engine.receiver")
    before = sorted(tmp_path.rglob("*"))

    ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
    assoc = ae.associate("127.0.0.1", receiver.port)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(_dataset(bad_uid))
    finally:
        assoc.release()

    assert status.Status == STATUS_CANNOT_UNDERSTAND
    assert "Invalid Affected SOP Instance UID" in status.ErrorComment
    assert _stored_files(out_dir) == []
    assert sorted(tmp_path.rglob("*")) == before
    assert receiver.stored_count == 0
    assert receiver.failed_count == 1
    assert "invalid SOP Instance UID" in caplog.text


@pytest.mark.dcmtk
def test_storescu_invalid_uid_rejected(
    receiver: StorageReceiver, out_dir: Path, tmp_path: Path
) -> None:
    """DCMTK storescu sending a file with UID ../../x gets a failure status."""
    source = tmp_path / "bad.dcm"
    dataset = _dataset("../../x")
    dataset.save_as(source, enforce_file_format=True)

    result = _run_storescu(["-v", "-R", "127.0.0.1", str(receiver.port), str(source)])

    assert "Received Store Response (Error: CannotUnderstand)" in result.stderr
    assert _stored_files(out_dir) == []
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "x.dcm").exists()


def test_same_object_twice_gives_two_files(
    receiver: StorageReceiver, out_dir: Path
) -> None:
    """A second copy gets _1.dcm, a third _2.dcm, and nothing is overwritten."""
    uid = generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = out_dir / f"{uid}.dcm"
    existing.write_bytes(b"already here")

    ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
    assoc = ae.associate("127.0.0.1", receiver.port)
    try:
        first = assoc.send_c_store(_dataset(uid))
        second = assoc.send_c_store(_dataset(uid))
    finally:
        assoc.release()

    assert first.Status == 0x0000
    assert second.Status == 0x0000
    assert existing.read_bytes() == b"already here"
    copies = [out_dir / f"{uid}_1.dcm", out_dir / f"{uid}_2.dcm"]
    assert _stored_files(out_dir) == sorted([existing, *copies])
    assert copies[0].read_bytes() == copies[1].read_bytes()
    assert dcmread(copies[0]).SOPInstanceUID == uid


def test_without_hard_links_still_exclusive(
    receiver: StorageReceiver, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links copies still get new names."""

    def no_link(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(receiver_module.os, "link", no_link)
    uid = generate_uid()

    ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
    assoc = ae.associate("127.0.0.1", receiver.port)
    try:
        statuses = [assoc.send_c_store(_dataset(uid)).Status for _ in range(2)]
    finally:
        assoc.release()

    assert statuses == [0x0000, 0x0000]
    names = [path.name for path in _stored_files(out_dir)]
    assert names == [f"{uid}.dcm", f"{uid}_1.dcm"]
    assert all(dcmread(out_dir / name).SOPInstanceUID == uid for name in names)


def test_write_failure_returns_a700(
    receiver: StorageReceiver,
    out_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed disk write returns status 0xA700 and leaves no file behind."""

    def disk_full(dataset: object, stream: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(receiver_module, "_copy_dataset", disk_full)
    caplog.set_level(logging.ERROR, logger="engine.receiver")

    ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
    assoc = ae.associate("127.0.0.1", receiver.port)
    try:
        status = assoc.send_c_store(_dataset(generate_uid()))
    finally:
        assoc.release()

    assert status.Status == STATUS_OUT_OF_RESOURCES
    assert status.ErrorComment == "Unable to store: No space left on device"
    assert _stored_files(out_dir) == []
    assert receiver.failed_count == 1
    assert "No space left on device" in caplog.text


def test_private_sop_class_stored(receiver: StorageReceiver, out_dir: Path) -> None:
    """An unknown or private SOP class is accepted and stored like any other."""
    private_class = "1.3.6.1.4.1.99999.1.2.3"
    uid = generate_uid()

    ae = _ae([(private_class, ExplicitVRLittleEndian)])
    assoc = ae.associate("127.0.0.1", receiver.port)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(_dataset(uid, private_class))
    finally:
        assoc.release()

    assert status.Status == 0x0000
    stored = dcmread(out_dir / f"{uid}.dcm")
    assert stored.file_meta.MediaStorageSOPClassUID == private_class
    assert stored.SOPClassUID == private_class


def test_context_negotiation(receiver: StorageReceiver) -> None:
    """Storage and Verification are accepted in the peer's preferred syntax."""
    ae = AE(ae_title="STORE-SCU")
    ae.add_requested_context(CTImageStorage, ["1.2.3.999", ExplicitVRLittleEndian])
    ae.add_requested_context(
        SecondaryCaptureImageStorage,
        [DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian],
    )
    ae.add_requested_context(SecondaryCaptureImageStorage, ["1.2.3.998"])
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)

    assoc = ae.associate("127.0.0.1", receiver.port)
    assert assoc.is_established
    accepted = {
        (cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
    }
    rejected = {(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts}
    assoc.release()

    assert accepted == {
        (CTImageStorage, ExplicitVRLittleEndian),
        (SecondaryCaptureImageStorage, DeflatedExplicitVRLittleEndian),
        (Verification, ExplicitVRLittleEndian),
    }
    # Result 0x04 is transfer syntaxes not supported, 0x03 abstract syntax not
    # supported.
    assert rejected == {
        (SecondaryCaptureImageStorage, 0x04),
        (PatientRootQueryRetrieveInformationModelFind, 0x03),
    }


def test_c_echo(receiver: StorageReceiver) -> None:
    """C-ECHO gets a success status from pynetdicom and from DCMTK echoscu."""
    ae = AE(ae_title="ECHO-SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    assert status.Status == 0x0000

    if ECHOSCU.exists():
        result = subprocess.run(
            [str(ECHOSCU), "127.0.0.1", str(receiver.port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_calling_ae_title_restricted(
    out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A calling AE title outside the allowed set is rejected with reason 3."""
    caplog.set_level(logging.INFO)
    with StorageReceiver(
        out_dir, port=0, allowed_calling_ae_titles={"GOOD-SCU"}
    ) as receiver:
        ae = _ae([(Verification, ImplicitVRLittleEndian)], ae_title="BAD-SCU")
        rejected = ae.associate("127.0.0.1", receiver.port)
        good = _ae([(Verification, ImplicitVRLittleEndian)], ae_title="GOOD-SCU")
        accepted = good.associate("127.0.0.1", receiver.port)
        accepted_echo = accepted.send_c_echo() if accepted.is_established else None
        accepted.release()

    assert rejected.is_rejected
    assert "Reason: Calling AE title not recognised" in caplog.text
    assert re.search(
        r"Rejected association from BAD-SCU at .* calling AE title not recognised",
        caplog.text,
    )
    assert accepted_echo is not None
    assert accepted_echo.Status == 0x0000


@pytest.mark.dcmtk
def test_storescu_calling_ae_title_rejected(out_dir: Path) -> None:
    """DCMTK storescu reports the calling AE title rejection."""
    with StorageReceiver(
        out_dir, port=0, allowed_calling_ae_titles=["GOOD-SCU"]
    ) as receiver:
        result = _run_storescu(
            [
                "-aet", "BAD-SCU",
                "127.0.0.1", str(receiver.port),
                str(PYDICOM_FILES / "CT_small.dcm"),
            ]
        )

    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    assert _stored_files(out_dir) == []


def test_called_ae_title_required(
    out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With require_called_ae_title another called AE title is rejected."""
    caplog.set_level(logging.INFO)
    with StorageReceiver(
        out_dir, port=0, ae_title="MY-SCP", require_called_ae_title=True
    ) as receiver:
        ae = _ae([(Verification, ImplicitVRLittleEndian)])
        rejected = ae.associate("127.0.0.1", receiver.port, ae_title="OTHER-SCP")
        accepted = ae.associate("127.0.0.1", receiver.port, ae_title="MY-SCP")
        accepted_established = accepted.is_established
        accepted.release()

    assert rejected.is_rejected
    assert "Reason: Called AE title not recognised" in caplog.text
    assert accepted_established


def _ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    not _ipv6_loopback_available(), reason="this machine has no IPv6 loopback (::1)"
)
def test_ipv6_loopback(out_dir: Path) -> None:
    """The receiver listens on ::1 and stores what arrives there."""
    uid = generate_uid()
    with StorageReceiver(out_dir, host="::1", port=0) as receiver:
        ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
        assoc = ae.associate("::1", receiver.port)
        try:
            status = assoc.send_c_store(_dataset(uid))
        finally:
            assoc.release()

    assert status.Status == 0x0000
    assert (out_dir / f"{uid}.dcm").is_file()


def test_stored_log_line(
    receiver: StorageReceiver, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each stored object is logged at INFO with class, UID, caller and path."""
    caplog.set_level(logging.INFO, logger="engine.receiver")
    uid = generate_uid()

    ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
    assoc = ae.associate("127.0.0.1", receiver.port)
    assoc.send_c_store(_dataset(uid))
    assoc.release()

    expected = f"Stored CT Image Storage {uid} from STORE-SCU as {out_dir / uid}.dcm"
    assert expected in caplog.messages
    assert any(
        message.startswith("Association from STORE-SCU at 127.0.0.1:")
        for message in caplog.messages
    )
    assert "Association from STORE-SCU released" in caplog.messages


def test_no_temporary_files_left(receiver: StorageReceiver, out_dir: Path) -> None:
    """Only final .dcm files remain after successful and failed stores."""
    ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
    assoc = ae.associate("127.0.0.1", receiver.port)
    statuses = [
        assoc.send_c_store(_dataset(uid)).Status
        for uid in (generate_uid(), "../x", generate_uid())
    ]
    assoc.release()

    assert statuses == [0x0000, STATUS_CANNOT_UNDERSTAND, 0x0000]
    names = [path.name for path in _stored_files(out_dir)]
    assert len(names) == 2
    assert all(name.endswith(".dcm") and not name.startswith(".") for name in names)


def test_serve_forever_stops_on_sigterm(tmp_path: Path) -> None:
    """serve_forever serves until SIGTERM, then stops and returns."""
    out_dir = tmp_path / "out"
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from engine.receiver import StorageReceiver\n"
        "StorageReceiver(sys.argv[1], port=0).serve_forever()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(out_dir)],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first_line = process.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", first_line)
        assert match, first_line
        port = int(match.group(1))

        ae = _ae([(Verification, ImplicitVRLittleEndian)])
        assoc = ae.associate("127.0.0.1", port)
        echo = assoc.send_c_echo()
        assoc.release()

        process.send_signal(signal.SIGTERM)
        remaining = process.communicate(timeout=20)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert echo.Status == 0x0000
    assert process.returncode == 0
    assert "SIGTERM received, stopping" in remaining
    assert "stopped: 0 objects stored, 0 failed" in remaining


def test_start_stop_lifecycle(out_dir: Path) -> None:
    """stop() is idempotent, a second start() raises, the port is released."""
    receiver = StorageReceiver(out_dir, port=0)
    assert not receiver.is_running
    receiver.start()
    port = receiver.port
    assert receiver.is_running
    assert port != 0
    assert out_dir.is_dir()
    with pytest.raises(RuntimeError, match="already running"):
        receiver.start()

    receiver.stop()
    receiver.stop()

    assert not receiver.is_running
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": -1}, "Invalid port -1"),
        ({"port": 70000}, "Invalid port 70000"),
        ({"ae_title": "A" * 17}, "Invalid ae_title"),
        ({"ae_title": "  "}, "Invalid ae_title"),
        (
            {"allowed_calling_ae_titles": ["OK", ""]},
            "Invalid allowed_calling_ae_titles",
        ),
        ({"max_pdu_length": 100}, "Invalid max_pdu_length 100"),
        ({"max_associations": 0}, "Invalid max_associations 0"),
    ],
)
def test_invalid_options_raise(
    out_dir: Path, options: dict[str, object], message: str
) -> None:
    """Each invalid option raises ValueError naming it."""
    with pytest.raises(ValueError, match=re.escape(message)):
        StorageReceiver(out_dir, **options)  # type: ignore[arg-type]


def test_out_dir_must_be_directory(tmp_path: Path) -> None:
    """An out_dir that is a file is rejected."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        StorageReceiver(not_a_dir)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("1.02.3", False),  # a leading zero in a component
        ("1.0.3", True),
        ("1" * 64, True),
        ("1" * 65, False),
        ("", False),
        ("1..2", False),
        (".1", False),
        ("1.2.", False),
        ("1.2/3", False),
        ("1.2\\3", False),
        ("1.2\x00", False),
        ("1.2 ", False),
        ("١.٢", False),  # Arabic-Indic digits
        (None, False),
    ],
)
def test_is_valid_uid(value: object, valid: bool) -> None:
    """Only ASCII digits and dots, no empty component, no leading zero pass."""
    assert is_valid_uid(value) is valid


def test_many_stores_counted(receiver: StorageReceiver, out_dir: Path) -> None:
    """stored_count matches the files written over two associations."""
    uids = [generate_uid() for _ in range(10)]
    for batch in (uids[:5], uids[5:]):
        ae = _ae([(CTImageStorage, ExplicitVRLittleEndian)])
        assoc = ae.associate("127.0.0.1", receiver.port)
        for uid in batch:
            assert assoc.send_c_store(_dataset(uid)).Status == 0x0000
        assoc.release()

    deadline = time.monotonic() + 5
    while receiver.stored_count < len(uids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.stored_count == len(uids)
    assert sorted(path.name for path in _stored_files(out_dir)) == sorted(
        f"{uid}.dcm" for uid in uids
    )


def test_truncated_data_set_rejected(
    receiver: StorageReceiver, out_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A data set cut inside its pixel data gets 0xC000, and no file is written."""
    from engine.association import Association, ContextRequest

    caplog.set_level(logging.ERROR, logger="engine.receiver")
    source = PYDICOM_FILES / "CT_small.dcm"
    file_meta, data = _split_file(source)
    cut = data[: len(data) - 1000]
    if len(cut) % 2:
        cut = cut[:-1]
    sop_instance_uid = str(file_meta.MediaStorageSOPInstanceUID)

    with Association.open(
        "127.0.0.1", receiver.port, calling_ae_title="STORE-SCU",
        called_ae_title="DICOMSEND",
        contexts=[ContextRequest(CTImageStorage, (ExplicitVRLittleEndian,))],
    ) as association:
        context_id = association.find_context(CTImageStorage, ExplicitVRLittleEndian)
        assert context_id is not None
        status = association.send_c_store(
            context_id, CTImageStorage, sop_instance_uid, cut
        )

    assert status.status == STATUS_CANNOT_UNDERSTAND
    assert "truncated" in (status.error_comment or "")
    assert _stored_files(out_dir) == []
    assert receiver.failed_count == 1
    assert f"Rejected CT Image Storage {sop_instance_uid}" in caplog.text
