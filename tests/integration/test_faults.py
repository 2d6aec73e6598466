"""Send to receivers that misbehave on purpose and check every file's outcome.

Each test starts one receiver on loopback that injects one fault: a
pynetdicom SCP that accepts few syntaxes or SOP classes, returns a chosen
status, allows one association or restarts; a proxy that aborts, closes or
stalls a connection in the middle of a file; or a raw-socket peer that
answers with malformed PDUs, a wrong message or a silent close. Each test
checks the counts, the message of each failure, and that the objects that
arrived are exactly those reported as stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from e2e_support import load_receivers, read
from engine import StoreScu
from transcode.transcoder import Transcoder

receivers = load_receivers()

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
UID_ROOT = "1.2.826.0.1.3680043.8.498.77."
# Short timeouts, so a fault that makes the sender wait costs about a second.
QUICK = {"connect_timeout": 5, "acse_timeout": 5, "dimse_timeout": 5,
         "network_timeout": 5, "transcode_workers": 1}


def make_file(folder: Path, index: int, *, sop_class: str = CT_IMAGE,
              syntax: str = ExplicitVRLittleEndian, size: int = 64) -> Path:
    """Write a small MONOCHROME2 image with SOP Instance UID ``UID_ROOT + index``."""
    dataset = Dataset()
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = f"{UID_ROOT}{index}"
    dataset.PatientID = "FAULTS"
    dataset.PatientName = "Faults^Test"
    dataset.StudyInstanceUID = f"{UID_ROOT}1000"
    dataset.SeriesInstanceUID = f"{UID_ROOT}1001"
    dataset.Modality = "CT" if sop_class == CT_IMAGE else "MR"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows = dataset.Columns = size
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    pixels = (np.arange(size * size, dtype=np.uint16) * (index + 3)) % 251
    dataset.PixelData = pixels.astype(np.uint8).tobytes()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax != ExplicitVRLittleEndian:
        dataset = Transcoder(syntax, keep_sop_instance_uid=True).transcode(
            dataset).dataset
    path = folder / f"file{index:03d}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


class Outcomes:
    """The callbacks of one send: files sent and failed, by file name."""

    def __init__(self) -> None:
        self.sent: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.sent_count: Counter[str] = Counter()

    def on_file_sent(self, err: Exception | None, event: Any) -> None:
        name = Path(event.data["file"]).name
        self.sent[name] = event.data
        self.sent_count[name] += 1

    def on_file_error(self, err: Exception | None, event: Any) -> None:
        self.errors[Path(event.data["file"]).name] = event.data["error"]

    def stored_uids(self) -> set[str]:
        return {data["sop_instance_uid"] for data in self.sent.values()}


def send(port: int, paths: list[Path], **options: Any) -> tuple[Any, Outcomes]:
    scu = StoreScu(f"127.0.0.1:{port}", **{**QUICK, **options})
    for path in paths:
        scu.add_file(path)
    outcomes = Outcomes()
    result = scu.send(on_file_sent=outcomes.on_file_sent,
                      on_file_error=outcomes.on_file_error)
    assert result.successful + result.failed == result.total_files
    return result, outcomes


class Arrivals:
    """A C-STORE handler that records what arrived and returns ``statuses``."""

    def __init__(self, statuses: dict[str, int] | None = None) -> None:
        self.statuses = statuses or {}
        self.requests: Counter[str] = Counter()
        self.syntaxes: dict[str, str] = {}
        self.datasets: dict[str, Dataset] = {}
        self.stored: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, event: Any) -> int:
        dataset = event.dataset
        uid = str(dataset.SOPInstanceUID)
        status = self.statuses.get(uid, 0x0000)
        with self.lock:
            self.requests[uid] += 1
            self.syntaxes[uid] = str(event.context.transfer_syntax)
            self.datasets[uid] = dataset
            if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                self.stored.add(uid)
        return status


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    return folder


# Syntax and SOP class negotiation


def test_implicit_only_receiver(files: Path, caplog: Any) -> None:
    """Compressed and explicit files all arrive in Implicit VR Little Endian."""
    syntaxes = [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless]
    paths = [make_file(files, index, syntax=syntax)
             for index, syntax in enumerate(syntaxes)]
    arrivals = Arrivals()
    caplog.set_level(logging.WARNING, logger="engine")
    with receivers.start_pynetdicom_scp(
            arrivals, transfer_syntaxes=[ImplicitVRLittleEndian]) as scp:
        result, outcomes = send(scp.port, paths)

    assert (result.successful, result.failed) == (3, 0)
    assert arrivals.stored == outcomes.stored_uids() == {
        f"{UID_ROOT}{index}" for index in range(3)}
    assert set(arrivals.syntaxes.values()) == {ImplicitVRLittleEndian}
    for index, syntax in enumerate(syntaxes):
        name = f"file{index:03d}.dcm"
        assert outcomes.sent[name]["transfer_syntax"] == ImplicitVRLittleEndian
        messages = [record.getMessage() for record in caplog.records]
        expected = [text for text in messages if name in text and "rejected" in text]
        assert expected, f"no fallback warning for {name}"
        assert syntax.name in expected[0]
        assert "Implicit VR Little Endian" in expected[0]
    # Pixels survive the fallback.
    original = read(paths[2]).pixel_array
    received = arrivals.datasets[f"{UID_ROOT}2"]
    received.file_meta = FileMetaDataset()
    received.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert np.array_equal(received.pixel_array, original)


def test_lossless_fallback_first(files: Path) -> None:
    """A refused compressed syntax falls back to a lossless one the receiver accepts."""
    paths = [make_file(files, 0, syntax=JPEG2000Lossless),
             make_file(files, 1, syntax=RLELossless),
             make_file(files, 2, syntax=ExplicitVRLittleEndian)]
    arrivals = Arrivals()
    accepted = [JPEGLSLossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    with receivers.start_pynetdicom_scp(arrivals, transfer_syntaxes=accepted) as scp:
        result, outcomes = send(scp.port, paths)

    assert (result.successful, result.failed) == (3, 0)
    assert arrivals.stored == outcomes.stored_uids()
    assert outcomes.sent["file000.dcm"]["transfer_syntax"] == JPEGLSLossless
    assert outcomes.sent["file001.dcm"]["transfer_syntax"] == JPEGLSLossless
    # A native file stays native: Explicit VR Little Endian is accepted.
    assert outcomes.sent["file002.dcm"]["transfer_syntax"] == ExplicitVRLittleEndian
    for index in (0, 1):
        received = arrivals.datasets[f"{UID_ROOT}{index}"]
        received.file_meta = FileMetaDataset()
        received.file_meta.TransferSyntaxUID = JPEGLSLossless
        assert np.array_equal(received.pixel_array, read(paths[index]).pixel_array)


def test_forced_lossy_falls_back_uncompressed(files: Path) -> None:
    """A lossy copy the receiver refuses goes uncompressed under its new UID."""
    paths = [make_file(files, index) for index in range(2)]
    arrivals = Arrivals()
    with receivers.start_pynetdicom_scp(
            arrivals, transfer_syntaxes=[ExplicitVRLittleEndian]) as scp:
        result, outcomes = send(scp.port, paths, transfer_syntax=JPEGBaseline8Bit,
                                allow_lossy=True)

    assert (result.successful, result.failed) == (2, 0)
    stored = outcomes.stored_uids()
    assert arrivals.stored == stored
    # The lossy copies are new objects: none keeps its source's UID.
    assert not stored & {f"{UID_ROOT}0", f"{UID_ROOT}1"}
    for uid in stored:
        assert arrivals.syntaxes[uid] == ExplicitVRLittleEndian
        assert arrivals.datasets[uid].LossyImageCompression == "01"


def test_refused_sop_class(files: Path) -> None:
    """Files of a SOP class the receiver refuses fail with that reason."""
    paths = [make_file(files, 0), make_file(files, 1),
             make_file(files, 2, sop_class=MR_IMAGE),
             make_file(files, 3, sop_class=MR_IMAGE)]
    arrivals = Arrivals()
    with receivers.start_pynetdicom_scp(arrivals, abstract_syntaxes=[CT_IMAGE]) as scp:
        result, outcomes = send(scp.port, paths)

    assert (result.successful, result.failed) == (2, 2)
    assert arrivals.stored == outcomes.stored_uids() == {f"{UID_ROOT}0",
                                                         f"{UID_ROOT}1"}
    for name in ("file002.dcm", "file003.dcm"):
        error = outcomes.errors[name]
        assert f"Unable to send '{files / name}' as the receiver refused" in error
        assert "MR Image Storage" in error
        assert "abstract syntax not supported" in error


# Statuses

STATUSES = {
    0: 0x0000, 1: 0xB000, 2: 0xB006, 3: 0xB007,
    4: 0xA700, 5: 0xA900, 6: 0xC000, 7: 0x0122,
}


def test_statuses_per_file(files: Path) -> None:
    """Warnings count as stored with a line each; failures carry code and meaning."""
    paths = [make_file(files, index) for index in STATUSES]
    arrivals = Arrivals({f"{UID_ROOT}{index}": status
                         for index, status in STATUSES.items()})
    with receivers.start_pynetdicom_scp(arrivals) as scp:
        result, outcomes = send(scp.port, paths, retries=1)

    assert (result.successful, result.failed, result.total_files) == (4, 4, 8)
    assert arrivals.stored == outcomes.stored_uids() == {
        f"{UID_ROOT}{index}" for index in range(4)}
    assert sorted(result.warnings) == [
        f"{paths[1]}: Coercion of data elements (0xB000)",
        f"{paths[2]}: Elements discarded (0xB006)",
        f"{paths[3]}: Data set does not match SOP class (0xB007)",
    ]
    assert outcomes.errors == {
        "file004.dcm": f"The receiver did not store '{paths[4]}': Refused: out of "
                       "resources (0xA700), 2 attempts",
        "file005.dcm": f"The receiver did not store '{paths[5]}': Error: data set "
                       "does not match SOP class (0xA900)",
        "file006.dcm": f"The receiver did not store '{paths[6]}': Error: cannot "
                       "understand (0xC000)",
        "file007.dcm": f"The receiver did not store '{paths[7]}': Refused: SOP "
                       "class not supported (0x0122)",
    }
    # Out of resources is retried; permanent failures are not.
    assert arrivals.requests[f"{UID_ROOT}4"] == 2
    for index in (0, 1, 2, 3, 5, 6, 7):
        assert arrivals.requests[f"{UID_ROOT}{index}"] == 1


# Broken connections, timeouts and limits


@pytest.mark.parametrize("kind", ["abort", "close"])
def test_connection_broken_mid_file(files: Path, kind: str) -> None:
    """An abort or close inside a data set is retried on a new association."""
    paths = [make_file(files, index, size=128) for index in range(4)]
    arrivals = Arrivals()
    with receivers.start_pynetdicom_scp(arrivals) as scp:
        # About 1 kB of negotiation, then 16 kB per file: the cut lands
        # inside the second file.
        with receivers.FaultProxy(scp.port, [(kind, 20000)]) as proxy:
            result, outcomes = send(proxy.port, paths)
            connections = proxy.connections
            injected = list(proxy.faults_injected)

    assert injected == [kind]
    assert connections == 2
    assert (result.successful, result.failed) == (4, 0)
    assert arrivals.stored == outcomes.stored_uids() == {
        f"{UID_ROOT}{index}" for index in range(4)}
    assert set(outcomes.sent_count.values()) == {1}


def test_receiver_stops_answering(files: Path, caplog: Any) -> None:
    """A receiver that goes silent times out; the file is sent again."""
    paths = [make_file(files, index, size=128) for index in range(3)]
    arrivals = Arrivals()
    caplog.set_level(logging.WARNING, logger="engine")
    started = time.monotonic()
    with receivers.start_pynetdicom_scp(arrivals) as scp:
        with receivers.FaultProxy(scp.port, [("stall", 20000)]) as proxy:
            result, outcomes = send(proxy.port, paths, dimse_timeout=1,
                                    network_timeout=1)
            connections = proxy.connections

    assert (result.successful, result.failed) == (3, 0)
    assert connections == 2
    assert arrivals.stored == outcomes.stored_uids()
    assert time.monotonic() - started < 20
    retries = [record.getMessage() for record in caplog.records
               if "retrying" in record.getMessage()]
    assert len(retries) == 1, retries
    assert "timed out" in retries[0].lower(), retries[0]


def test_second_association_refused(files: Path, caplog: Any) -> None:
    """With one association allowed, the other sender stops and none is lost."""
    paths = [make_file(files, index) for index in range(24)]
    arrivals = Arrivals()
    caplog.set_level(logging.WARNING, logger="engine")
    with receivers.start_pynetdicom_scp(arrivals) as scp:
        scp.ae.maximum_associations = 1
        result, outcomes = send(scp.port, paths, concurrency=2, retries=3)

    rejections = [record.getMessage() for record in caplog.records
                  if "rejected" in record.getMessage()]
    assert rejections, "the receiver never rejected the second association"
    assert "local limit exceeded (transient" in rejections[0]

    assert (result.successful, result.failed, result.total_files) == (24, 0, 24)
    assert arrivals.stored == outcomes.stored_uids()
    assert len(arrivals.stored) == 24
    assert set(outcomes.sent_count.values()) == {1}
    assert set(arrivals.requests.values()) == {1}


def test_receiver_restarts_mid_batch(files: Path) -> None:
    """The receiver goes away after 8 files and comes back; every file arrives."""
    paths = [make_file(files, index) for index in range(30)]
    arrivals = Arrivals()
    eighth = threading.Event()

    def handle(event: Any) -> int:
        status = arrivals(event)
        if len(arrivals.stored) == 8:
            eighth.set()
        return status

    with receivers.RestartableScp(handle) as scp:
        def restart() -> None:
            if eighth.wait(timeout=30):
                scp.stop()
                time.sleep(0.3)
                scp.start()

        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        result, outcomes = send(scp.port, paths, retries=4)
        restarter.join(timeout=30)

    assert eighth.is_set()
    assert (result.successful, result.failed) == (30, 0)
    assert arrivals.stored == outcomes.stored_uids()
    assert len(arrivals.stored) == 30


def test_receiver_unreachable_fails_batch(files: Path) -> None:
    """Nothing listening: send raises ConnectionFailedError, no file is sent."""
    from engine.errors import ConnectionFailedError

    paths = [make_file(files, 0)]
    port = receivers.free_port()
    scu = StoreScu(f"127.0.0.1:{port}", **QUICK)
    scu.add_file(paths[0])
    with pytest.raises(ConnectionFailedError, match="could not establish association"):
        scu.send()


# Malformed responses from a raw-socket peer

FAKE_FAULTS = {
    1: "unknown_pdu",
    2: "truncated_pdu",
    3: "bad_pdv",
    4: "unknown_message",
    5: "wrong_message_id",
    6: "silent_close",
}


@pytest.fixture
def fake_scp() -> Iterator[Any]:
    with receivers.FakeScp({f"{UID_ROOT}{index}": fault
                            for index, fault in FAKE_FAULTS.items()}) as scp:
        yield scp


def test_malformed_answers(files: Path, fake_scp: Any) -> None:
    """Each wrong answer fails its file with a clear error; the batch goes on."""
    paths = [make_file(files, index) for index in range(8)]
    result, outcomes = send(fake_scp.port, paths, retries=1)

    assert (result.successful, result.failed) == (2, 6)
    assert set(fake_scp.stored) == outcomes.stored_uids() == {
        f"{UID_ROOT}0", f"{UID_ROOT}7"}
    address = f"127.0.0.1:{fake_scp.port}"
    aborted = f"(from {address}); the association was aborted"
    closed = (f"Association with {address} lost while waiting for the C-STORE-RSP "
              "(message ID 1): the receiver closed the connection")
    assert outcomes.errors == {
        "file001.dcm": f"Unable to send '{paths[1]}': Received an unknown PDU "
                       f"type 0x0A {aborted}",
        "file002.dcm": f"Unable to send '{paths[2]}' after 2 attempts: {closed}",
        "file003.dcm": f"Unable to send '{paths[3]}': PDV item length 500 does "
                       f"not fit the P-DATA-TF PDU (6 bytes remain) {aborted}",
        "file004.dcm": f"Unable to send '{paths[4]}': Received an unexpected "
                       "N-EVENT-REPORT-RQ while waiting for the C-STORE-RSP "
                       f"(message ID 1) {aborted}",
        "file005.dcm": f"Unable to send '{paths[5]}': Received a C-STORE-RSP for "
                       "message ID 2 while waiting for the C-STORE-RSP (message "
                       f"ID 1) {aborted}",
        "file006.dcm": f"Unable to send '{paths[6]}' after 2 attempts: {closed}",
    }
    # A protocol error is not retried; a closed connection is, once.
    for index in (0, 1, 3, 4, 5, 7):
        assert fake_scp.requests[f"{UID_ROOT}{index}"] == 1
    for index in (2, 6):
        assert fake_scp.requests[f"{UID_ROOT}{index}"] == 2
