"""Tests of engine.association against DCMTK storescp, pynetdicom and fake peers.

The fake peers are scripted receivers on raw loopback sockets: they send the
malformed PDUs, wrong message IDs, aborts and silences that real receivers
rarely produce on demand.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType

import psutil
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_AC, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from engine import pdu
from engine.association import Association, ContextRequest, FileSlice
from engine.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    AssociationTimeoutError,
    ConnectionFailedError,
    FileError,
    NoContextError,
    ProtocolError,
)
from engine.options import Timeouts
from engine.statuses import StatusCategory

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS = PROJECT_ROOT / ".." / "shared" / "corpus" / "real"
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

FAST = Timeouts(connect=5.0, acse=5.0, dimse=5.0, network=5.0)


def load_receivers() -> ModuleType:
    """Return ``tests/receivers.py``, loaded by path.

    Importing it as ``tests.receivers`` would need the project root on
    ``sys.path``, which plain ``pytest`` does not add. The module name is the
    one the integration tests use, so both share one copy.
    """
    name = "dicomsend_test_receivers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, PROJECT_ROOT / "tests" / "receivers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


receivers = load_receivers()
free_port = receivers.free_port
start_pynetdicom_scp = receivers.start_pynetdicom_scp
start_storescp = receivers.start_storescp


# --- helpers -----------------------------------------------------------------


def meta_end(path: Path) -> int | None:
    """Return where the data set starts, after a file meta with group length."""
    with path.open("rb") as handle:
        head = handle.read(144)
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    if head[132:138] != b"\x02\x00\x00\x00UL":
        return None
    return 144 + int(struct.unpack("<I", head[140:144])[0])


def sendable_files() -> list[tuple[Path, str, str, str, FileSlice]]:
    """Every even-length test and corpus file with a file meta, one per SOP Instance.

    Returns (path, SOP class, SOP instance, transfer syntax, data set slice).
    """
    candidates = [
        path for path in sorted(PYDICOM_TEST_FILES.rglob("*")) + sorted(
            CORPUS.rglob("*"))
        if path.is_file()
    ]
    found = []
    seen = set()
    for path in candidates:
        offset = meta_end(path)
        if offset is None:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class = str(ds.file_meta.MediaStorageSOPClassUID)
            sop_instance = str(ds.SOPInstanceUID)
            transfer = str(ds.file_meta.TransferSyntaxUID)
        except (AttributeError, pydicom.errors.InvalidDicomError):
            continue
        size = path.stat().st_size
        if sop_instance in seen or (size - offset) % 2:
            # storescp aborts on an odd-length data set (image_dfl.dcm leaves
            # its deflated stream unpadded, which PS3.5 section A.5 forbids).
            continue
        seen.add(sop_instance)
        found.append(
            (path, sop_class, sop_instance, transfer,
             FileSlice(path, offset, size - offset))
        )
    return found


def encode_dataset(sop_class: str, sop_instance: str, pixels: bytes = b"") -> bytes:
    """Return a small Explicit VR Little Endian data set."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = "Test^Association"
    if pixels:
        ds.BitsAllocated = 8
        ds.PixelData = pixels
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def raw_dataset_header(sop_class: str, sop_instance: str, pixel_length: int) -> bytes:
    """Return the elements of a data set up to the Pixel Data value (OB)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = "Test^Streaming"
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    return buffer.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0,
                                           pixel_length)


def write_large_dataset(path: Path, sop_instance: str, pixel_length: int) -> FileSlice:
    """Write a data set with ``pixel_length`` bytes of Pixel Data, 1 MiB at a time."""
    header = raw_dataset_header(SECONDARY_CAPTURE, sop_instance, pixel_length)
    block = bytes(range(256)) * 4096
    with path.open("wb") as handle:
        handle.write(header)
        remaining = pixel_length
        while remaining:
            piece = block[:min(len(block), remaining)]
            handle.write(piece)
            remaining -= len(piece)
    return FileSlice(path, 0, len(header) + pixel_length)


def open_association(port: int, contexts: list[ContextRequest], *,
                     host: str = "127.0.0.1", called: str = "ANY-SCP",
                     timeouts: Timeouts = FAST, max_pdu: int = 16384) -> Association:
    return Association.open(
        host, port, calling_ae_title="STORE-SCU", called_ae_title=called,
        contexts=contexts, max_pdu_length=max_pdu, timeouts=timeouts,
    )


# --- the receivers helper ----------------------------------------------------


def test_find_dcmtk_tool_skips_scripts() -> None:
    """find_dcmtk_tool returns the DCMTK binary, never a script of the same name."""
    path = receivers.find_dcmtk_tool("storescp")
    if path is None:
        pytest.skip("DCMTK is not installed")

    assert path.parent in receivers.DCMTK_DIRECTORIES
    assert path.read_bytes()[:4] == b"\x7fELF"
    assert receivers.find_dcmtk_tool("no-such-dcmtk-tool") is None


@pytest.mark.parametrize(("ci", "outcome"), [("true", "Failed"), ("", "Skipped")])
def test_missing_dcmtk_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    """A missing DCMTK tool fails the test under CI=true and skips it otherwise."""
    monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException) as info:
        receivers.require_dcmtk_tool("no-such-dcmtk-tool")

    assert type(info.value).__name__ == outcome
    assert "no-such-dcmtk-tool was not found" in str(info.value)


# --- DCMTK storescp ----------------------------------------------------------


def test_files_arrive_intact_at_storescp(tmp_path: Path) -> None:
    """Test and corpus files sent as FileSlices arrive byte for byte in storescp."""
    files = sendable_files()
    assert len(files) > 100
    pairs = sorted({(sop_class, transfer) for _, sop_class, _, transfer, _ in files})
    assert len(pairs) <= 128
    contexts = [ContextRequest(sop_class, (transfer,)) for sop_class, transfer in pairs]
    out_dir = tmp_path / "received"
    out_dir.mkdir()

    # Send everything the receiver accepted a context for.
    sent = {}
    with start_storescp(out_dir, "+xa", "-pm", "+B") as scp:
        with open_association(scp.port, contexts) as assoc:
            for path, sop_class, sop_instance, transfer, payload in files:
                context_id = assoc.find_context(sop_class, transfer)
                if context_id is None:
                    continue
                status = assoc.send_c_store(context_id, sop_class, sop_instance,
                                            payload)
                assert status.category is StatusCategory.SUCCESS, (path, status)
                sent[sop_instance] = (path, payload)
    assert len(sent) > 100

    # Compare what arrived with what was sent.
    arrived = {path.name.split(".", 1)[1]: path for path in out_dir.iterdir()}
    assert set(arrived) == set(sent)
    for sop_instance, (path, payload) in sent.items():
        received = arrived[sop_instance]
        offset = meta_end(received)
        assert offset is not None
        original_bytes = path.read_bytes()[payload.offset:]
        assert received.read_bytes()[offset:] == original_bytes, path
        original = pydicom.dcmread(path)
        copy = pydicom.dcmread(received)
        assert copy.SOPInstanceUID == original.SOPInstanceUID
        for element in original:
            assert copy[element.tag].value == element.value, (path, element.tag)
        if "PixelData" in original:
            assert copy.PixelData == original.PixelData


def test_streamed_file_arrives_intact(tmp_path: Path) -> None:
    """A FileSlice above the single-read limit is streamed and arrives unchanged."""
    source = tmp_path / "large.dcm"
    payload = write_large_dataset(source, "1.2.826.0.1.3680043.8.498.77",
                                  12 * 1024 * 1024 + 6)
    out_dir = tmp_path / "received"
    out_dir.mkdir()

    with start_storescp(out_dir, "+xa", "+B") as scp:
        with open_association(scp.port, [ContextRequest(SECONDARY_CAPTURE,
                                                         (EXPLICIT,))]) as assoc:
            status = assoc.send_c_store(
                assoc.find_context(SECONDARY_CAPTURE, EXPLICIT) or 0,
                SECONDARY_CAPTURE, "1.2.826.0.1.3680043.8.498.77", payload)

    assert status.status == 0x0000
    received = next(out_dir.iterdir())
    offset = meta_end(received)
    assert offset is not None
    assert received.read_bytes()[offset:] == source.read_bytes()


def test_large_file_streams_with_bounded_memory(tmp_path: Path) -> None:
    """Sending a 200 MB data set raises the RSS by far less than its size."""
    size = 200 * 1024 * 1024
    payload = write_large_dataset(tmp_path / "huge.dcm",
                                  "1.2.826.0.1.3680043.8.498.78", size)
    process = psutil.Process()
    peak = [0]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    with start_storescp(tmp_path, "+xa", "--ignore") as scp:
        with open_association(scp.port, [ContextRequest(SECONDARY_CAPTURE,
                                                         (EXPLICIT,))]) as assoc:
            before = process.memory_info().rss
            sampler = threading.Thread(target=sample_rss)
            sampler.start()
            try:
                status = assoc.send_c_store(1, SECONDARY_CAPTURE,
                                            "1.2.826.0.1.3680043.8.498.78", payload)
            finally:
                done.set()
                sampler.join()

    assert status.category is StatusCategory.SUCCESS
    growth = peak[0] - before
    assert growth < 32 * 1024 * 1024, f"RSS grew by {growth} bytes"


def test_c_echo_against_storescp(tmp_path: Path) -> None:
    """C-ECHO on the Verification context returns 0x0000."""
    with start_storescp(tmp_path) as scp:
        with open_association(scp.port, [ContextRequest(VERIFICATION,
                                                         (IMPLICIT,))]) as assoc:
            assert assoc.send_c_echo() == 0x0000
            assert assoc.send_c_echo() == 0x0000


def test_storescp_refuse_is_rejected(tmp_path: Path) -> None:
    """storescp --refuse sends A-ASSOCIATE-RJ, reported in words.

    storescp 3.6.7 has no option to check the called AE title, so the AE
    title case is tested against pynetdicom below.
    """
    with start_storescp(tmp_path, "--refuse") as scp:
        with pytest.raises(AssociationRejectedError,
                           match=r"rejected by 127\.0\.0\.1:\d+: no reason given "
                                 r"\(permanent, source: service user\)") as info:
            open_association(scp.port, [ContextRequest(VERIFICATION, (IMPLICIT,))])

    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 1)
    assert info.value.transient is False


@pytest.mark.parametrize("option", ["--abort-during", "--abort-after"])
@pytest.mark.parametrize("pixel_length", [400_000, 6_000_000])
def test_storescp_aborts_store(tmp_path: Path, option: str, pixel_length: int) -> None:
    """A storescp abort during or after a store names the peer and the abort.

    The 6 MB file goes through the streaming path, where the abort usually
    arrives while we are still sending.
    """
    source = tmp_path / "input.dcm"
    payload = write_large_dataset(source, "1.2.3.4", pixel_length)
    with start_storescp(tmp_path, option) as scp:
        assoc = open_association(scp.port, [ContextRequest(SECONDARY_CAPTURE,
                                                           (EXPLICIT,))])
        with pytest.raises(
            AssociationAbortedError,
            match=r"Association aborted by 127\.0\.0\.1:\d+ while (sending|waiting "
                  r"for) the C-STORE-(RQ|RSP) \(message ID 1\) \(source: service "
                  r"user\)",
        ):
            assoc.send_c_store(1, SECONDARY_CAPTURE, "1.2.3.4", payload)

    assert not assoc.is_alive
    with pytest.raises(AssociationAbortedError, match="no longer usable"):
        assoc.send_c_store(1, SECONDARY_CAPTURE, "1.2.3.4", payload)


# --- pynetdicom SCPs ---------------------------------------------------------


def test_statuses_per_file_from_pynetdicom() -> None:
    """Success, warning and failure statuses come back with category and comment."""
    statuses = {"1.2.3.1": 0x0000, "1.2.3.2": 0xB000, "1.2.3.3": 0xA700,
                "1.2.3.4": 0xC123, "1.2.3.5": 0x0122, "1.2.3.6": 0x1234}

    def handle_store(event: evt.Event) -> Dataset:
        reply = Dataset()
        reply.Status = statuses[event.request.AffectedSOPInstanceUID]
        if reply.Status == 0xA700:
            reply.ErrorComment = "Out of disk space"
        return reply

    with start_pynetdicom_scp(handle_store) as scp:
        with open_association(scp.port, [ContextRequest(CT_IMAGE,
                                                         (EXPLICIT,))]) as assoc:
            results = {
                uid: assoc.send_c_store(1, CT_IMAGE, uid, encode_dataset(CT_IMAGE, uid))
                for uid in statuses
            }

    assert results["1.2.3.1"].category is StatusCategory.SUCCESS
    assert results["1.2.3.2"].status == 0xB000
    assert results["1.2.3.2"].category is StatusCategory.WARNING
    assert results["1.2.3.2"].meaning == "Coercion of data elements"
    assert results["1.2.3.3"].category is StatusCategory.FAILURE
    assert results["1.2.3.3"].error_comment == "Out of disk space"
    assert str(results["1.2.3.3"]) == (
        "Refused: out of resources (0xA700): Out of disk space")
    assert results["1.2.3.4"].meaning == "Error: cannot understand"
    assert results["1.2.3.5"].meaning == "Refused: SOP class not supported"
    assert results["1.2.3.6"].category is StatusCategory.FAILURE
    assert results["1.2.3.6"].meaning == "Unknown status"


def test_context_rejection_reasons(caplog: pytest.LogCaptureFixture) -> None:
    """Rejected contexts are reported per abstract syntax with the reason."""
    caplog.set_level(logging.INFO, logger="engine.association")
    with start_pynetdicom_scp(abstract_syntaxes=[CT_IMAGE, VERIFICATION],
                              transfer_syntaxes=[EXPLICIT]) as scp:
        contexts = [
            ContextRequest(CT_IMAGE, (JPEG_BASELINE,)),
            ContextRequest(CT_IMAGE, (EXPLICIT,)),
            ContextRequest(MR_IMAGE, (EXPLICIT,)),
            ContextRequest(SECONDARY_CAPTURE, (JPEG_BASELINE,)),
        ]
        with open_association(scp.port, contexts) as assoc:
            accepted = dict(assoc.accepted_contexts)
            rejected = dict(assoc.rejected_contexts)
            found = assoc.find_context(CT_IMAGE, EXPLICIT)
            missing = assoc.find_context(CT_IMAGE, JPEG_BASELINE)

    assert accepted == {(CT_IMAGE, EXPLICIT): 3}
    assert rejected == {MR_IMAGE: "abstract syntax not supported",
                        SECONDARY_CAPTURE: "abstract syntax not supported"}
    assert found == 3
    assert missing is None
    messages = [record.getMessage() for record in caplog.records]
    assert ("Presentation context accepted: CT Image Storage, transfer syntax: "
            "Explicit VR Little Endian") in messages
    assert ("Presentation context rejected: MR Image Storage (abstract syntax not "
            "supported)") in messages


def test_transfer_syntax_rejection_reason() -> None:
    """A supported SOP class in an unsupported syntax names the transfer syntax."""
    with start_pynetdicom_scp(abstract_syntaxes=[CT_IMAGE],
                              transfer_syntaxes=[EXPLICIT]) as scp:
        contexts = [ContextRequest(CT_IMAGE, (JPEG_BASELINE,)),
                    ContextRequest(CT_IMAGE, (IMPLICIT,))]
        with open_association(scp.port, contexts) as assoc:
            rejected = dict(assoc.rejected_contexts)
            accepted = dict(assoc.accepted_contexts)

    assert accepted == {}
    assert rejected == {CT_IMAGE: "transfer syntaxes not supported"}


def test_called_ae_title_not_recognised() -> None:
    """A receiver that checks the called AE title rejects with that reason."""
    with start_pynetdicom_scp(ae_title="PACS", require_called_aet=True) as scp:
        with pytest.raises(
            AssociationRejectedError,
            match=r"Association rejected by 127\.0\.0\.1:\d+: called AE title not "
                  r"recognised \(permanent, source: service user\); check the called "
                  r"AE title 'WRONG-AE'$",
        ) as info:
            open_association(scp.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))],
                             called="WRONG-AE")

    assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 7)


def test_lifecycle_logging_and_release(caplog: pytest.LogCaptureFixture) -> None:
    """INFO and DEBUG lines read as documented, and release reaches the SCP."""
    caplog.set_level(logging.DEBUG, logger="engine.association")
    released = threading.Event()
    handlers = [(evt.EVT_RELEASED, lambda event: released.set())]
    with start_pynetdicom_scp(handlers=handlers) as scp:
        with open_association(scp.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))]) as a:
            a.send_c_store(1, CT_IMAGE, "1.2.3", encode_dataset(CT_IMAGE, "1.2.3"))
        assert released.wait(5)

    messages = [record.getMessage() for record in caplog.records]
    address = f"127.0.0.1:{scp.port}"
    assert messages[0] == f"Connecting to {address}"
    assert f"Association established with {address} (max PDU 16382)" in messages
    assert ("Sending C-STORE-RQ: message ID 1, CT Image Storage, SOP Instance 1.2.3"
            in messages)
    assert "C-STORE response: Success (0x0000)" in messages
    assert messages[-1] == "Association released"


def test_exception_in_block_aborts() -> None:
    """An exception inside the with block aborts instead of releasing."""
    aborted = threading.Event()
    handlers = [(evt.EVT_ABORTED, lambda event: aborted.set())]
    with start_pynetdicom_scp(handlers=handlers) as scp:
        with pytest.raises(KeyError):
            with open_association(scp.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))]):
                raise KeyError("caller failed")
        assert aborted.wait(5)


def test_message_id_wraps_after_65535() -> None:
    """Message IDs increase per request and wrap from 65535 to 1."""
    seen: list[int] = []

    def handle_store(event: evt.Event) -> int:
        seen.append(event.request.MessageID)
        return 0x0000

    with start_pynetdicom_scp(handle_store) as scp:
        with open_association(scp.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))]) as a:
            a.send_c_store(1, CT_IMAGE, "1.2.3", encode_dataset(CT_IMAGE, "1.2.3"))
            a._message_id = 65534
            for _ in range(3):
                a.send_c_store(1, CT_IMAGE, "1.2.3", encode_dataset(CT_IMAGE, "1.2.3"))

    assert seen == [1, 65535, 1, 2]


def test_c_echo_without_verification_context() -> None:
    """C-ECHO needs an accepted Verification context."""
    with start_pynetdicom_scp() as scp:
        with open_association(scp.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))]) as a:
            with pytest.raises(NoContextError, match="Verification SOP class"):
                a.send_c_echo()


def test_send_on_wrong_context_raises() -> None:
    """A context ID that was not accepted for the SOP class is a ValueError."""
    with start_pynetdicom_scp() as scp:
        with open_association(scp.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))]) as a:
            with pytest.raises(ValueError, match="did not accept"):
                a.send_c_store(5, CT_IMAGE, "1.2.3", b"")
            with pytest.raises(ValueError, match="not for SOP class"):
                a.send_c_store(1, MR_IMAGE, "1.2.3", b"")


# --- opening failures --------------------------------------------------------


def test_nothing_listening_ipv4() -> None:
    """A closed port raises ConnectionFailedError with address and OS reason."""
    port = free_port()
    with pytest.raises(
        ConnectionFailedError,
        match=rf"could not establish association with 127\.0\.0\.1:{port} "
              r"\(Connection refused\)",
    ):
        open_association(port, [ContextRequest(CT_IMAGE, (EXPLICIT,))])


def test_nothing_listening_ipv6() -> None:
    """IPv6 addresses appear in brackets in the message."""
    port = free_port("::1")
    with pytest.raises(ConnectionFailedError,
                       match=rf"could not establish association with \[::1\]:{port}"):
        open_association(port, [ContextRequest(CT_IMAGE, (EXPLICIT,))], host="::1")


def test_too_many_contexts() -> None:
    """More than 128 presentation contexts raise ValueError before connecting."""
    contexts = [ContextRequest(f"1.2.3.{i}", (EXPLICIT,)) for i in range(129)]
    with pytest.raises(ValueError, match="129 presentation contexts"):
        open_association(free_port(), contexts)


# --- fake peers ----------------------------------------------------------------


class FakePeer:
    """A one-connection receiver on a raw socket that runs ``script(peer)``."""

    def __init__(self, script: Callable[[FakePeer], None], host: str = "127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.port = int(self.listener.getsockname()[1])
        self.script = script
        self.received: list[int] = []
        self.error: BaseException | None = None
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(10)
            self.conn = conn
            with conn:
                self.script(self)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def recv_exactly(self, length: int) -> bytes:
        assert self.conn is not None
        data = b""
        while len(data) < length:
            chunk = self.conn.recv(length - len(data))
            if not chunk:
                raise ConnectionError("the requestor closed the connection")
            data += chunk
        return data

    def read_pdu(self) -> tuple[int, bytes]:
        pdu_type, length = struct.unpack(">BxI", self.recv_exactly(6))
        body = self.recv_exactly(length)
        self.received.append(pdu_type)
        return pdu_type, body

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def accept_association(self, max_pdu: int = 16384) -> None:
        pdu_type, _ = self.read_pdu()
        assert pdu_type == pdu.A_ASSOCIATE_RQ
        self.send(pynetdicom_ac(max_pdu))

    def read_message(self) -> int:
        """Read one DIMSE request (command and data set); return its message ID."""
        command = b""
        while True:
            pdu_type, body = self.read_pdu()
            assert pdu_type == pdu.P_DATA_TF
            for _, control, data in pdu.decode_pdata(body):
                if control & pdu.PDV_COMMAND:
                    command += data
                    if control & pdu.PDV_LAST_FRAGMENT:
                        fields = pdu.decode_command_set(command)
                        data_set_type = fields[pdu.TAG_COMMAND_DATA_SET_TYPE]
                        if data_set_type == b"\x01\x01":
                            return int.from_bytes(fields[pdu.TAG_MESSAGE_ID], "little")
                elif control & pdu.PDV_LAST_FRAGMENT:
                    fields = pdu.decode_command_set(command)
                    return int.from_bytes(fields[pdu.TAG_MESSAGE_ID], "little")

    def wait_for_close(self) -> None:
        """Read until the requestor closes, recording PDU types."""
        try:
            while True:
                self.read_pdu()
        except (ConnectionError, OSError):
            pass

    def finish(self) -> None:
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def pynetdicom_ac(max_pdu: int, result: int = 0) -> bytes:
    """Return an A-ASSOCIATE-AC from pynetdicom's encoder, context 1 accepted."""
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = CT_IMAGE
    context.transfer_syntax = [EXPLICIT]
    context.result = result
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORE-SCU"
    primitive.called_ae_title = "ANY-SCP"
    primitive.result = 0
    primitive.presentation_context_definition_results_list = [context]
    primitive.user_information = [maximum]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(primitive)
    return bytes(ac.encode())


def pynetdicom_response(message_id: int, status: int = 0, *, echo: bool = False,
                        context_id: int = 1) -> bytes:
    """Return a C-STORE-RSP (or C-ECHO-RSP) as P-DATA-TF from pynetdicom."""
    if echo:
        primitive: C_ECHO | C_STORE = C_ECHO()
        primitive.AffectedSOPClassUID = VERIFICATION
        message: C_ECHO_RSP | C_STORE_RSP = C_ECHO_RSP()
    else:
        primitive = C_STORE()
        primitive.AffectedSOPClassUID = CT_IMAGE
        primitive.AffectedSOPInstanceUID = "1.2.3"
        message = C_STORE_RSP()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.Status = status
    message.primitive_to_message(primitive)
    encoded = b""
    for p_data in message.encode_msg(context_id, 16384):
        tf = P_DATA_TF()
        tf.from_primitive(p_data)
        encoded += bytes(tf.encode())
    return encoded


def store_once(port: int, host: str = "127.0.0.1",
               timeouts: Timeouts = FAST) -> Association:
    """Open an association to a fake peer and send one C-STORE; return it."""
    assoc = open_association(port, [ContextRequest(CT_IMAGE, (EXPLICIT,))],
                             host=host, timeouts=timeouts)
    assoc.send_c_store(1, CT_IMAGE, "1.2.3", encode_dataset(CT_IMAGE, "1.2.3"))
    return assoc


@pytest.fixture
def fake_peer() -> Iterator[Callable[..., FakePeer]]:
    peers: list[FakePeer] = []

    def start(script: Callable[[FakePeer], None], host: str = "127.0.0.1") -> FakePeer:
        peer = FakePeer(script, host)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.listener.close()
        peer.thread.join(10)


def test_fake_peer_ipv6_store_and_release(
    fake_peer: Callable[..., FakePeer], caplog: pytest.LogCaptureFixture
) -> None:
    """A full exchange over IPv6: store, status, release."""
    caplog.set_level(logging.INFO, logger="engine.association")

    def script(peer: FakePeer) -> None:
        peer.accept_association(max_pdu=0)
        peer.send(pynetdicom_response(peer.read_message(), 0x0001))
        assert peer.read_pdu()[0] == pdu.A_RELEASE_RQ
        peer.send(pdu.encode_release_rp())

    peer = fake_peer(script, "::1")
    assoc = open_association(peer.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))],
                             host="::1")
    status = assoc.send_c_store(1, CT_IMAGE, "1.2.3", encode_dataset(CT_IMAGE, "1.2.3"))
    assoc.release()
    peer.finish()

    assert status.category is StatusCategory.WARNING
    assert assoc.peer_max_pdu_length == 0
    assert (f"Association established with [::1]:{peer.port} (max PDU unlimited)"
            in caplog.messages)


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"\x0a\x00\x00\x00\x00\x02ab", "unknown PDU type 0x0A"),
        (b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x30\x01\x03ab", "does not fit"),
        (pynetdicom_response(99), r"C-STORE-RSP for message ID 99 while waiting for "
                                  r"the C-STORE-RSP \(message ID 1\)"),
        (pynetdicom_response(1, echo=True), "unexpected C-ECHO-RSP"),
        (pynetdicom_response(1, context_id=3), "presentation context 3"),
        (pdu.encode_release_rp(), "unexpected A-RELEASE-RP"),
    ],
    ids=["unknown-type", "bad-pdv", "wrong-id", "wrong-command", "wrong-context",
         "release-rp"],
)
def test_fake_peer_protocol_errors(
    fake_peer: Callable[..., FakePeer], reply: bytes, match: str
) -> None:
    """Malformed or wrong responses raise ProtocolError and abort the association."""
    def script(peer: FakePeer) -> None:
        peer.accept_association()
        peer.read_message()
        peer.send(reply)
        peer.wait_for_close()

    peer = fake_peer(script)
    with pytest.raises(ProtocolError, match=match) as info:
        store_once(peer.port)
    peer.finish()

    assert "the association was aborted" in str(info.value)
    assert peer.received[-1] == pdu.A_ABORT


def test_fake_peer_never_responds(fake_peer: Callable[..., FakePeer]) -> None:
    """A missing response raises AssociationTimeoutError naming the DIMSE wait."""
    def script(peer: FakePeer) -> None:
        peer.accept_association()
        peer.read_message()
        peer.wait_for_close()

    peer = fake_peer(script)
    timeouts = Timeouts(connect=5, acse=5, dimse=0.3, network=5)
    assoc = open_association(peer.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))],
                             timeouts=timeouts)
    with pytest.raises(AssociationTimeoutError,
                       match=r"C-STORE-RSP \(message ID 1\) .*DIMSE timeout of 0\.3 s"):
        assoc.send_c_store(1, CT_IMAGE, "1.2.3", encode_dataset(CT_IMAGE, "1.2.3"))
    peer.finish()

    assert peer.received[-1] == pdu.A_ABORT
    with pytest.raises(AssociationAbortedError,
                       match="no longer usable: DIMSE timeout"):
        assoc.send_c_echo()


@pytest.mark.parametrize(
    ("reply", "match", "last_from_us"),
    [
        (pdu.encode_abort(2, 1), r"aborted by 127\.0\.0\.1:\d+ while waiting for the "
         r"C-STORE-RSP \(message ID 1\) \(source: service provider, reason: "
         r"unrecognised PDU\)", pdu.P_DATA_TF),
        (pdu.encode_release_rq(), "released by .* so the request has no response",
         pdu.A_RELEASE_RP),
        (b"", "the receiver closed the connection", pdu.P_DATA_TF),
    ],
    ids=["abort", "release-rq", "close"],
)
def test_fake_peer_ends_association_mid_wait(
    fake_peer: Callable[..., FakePeer], reply: bytes, match: str, last_from_us: int
) -> None:
    """A-ABORT, A-RELEASE-RQ or a close while we wait raise AssociationAbortedError."""
    def script(peer: FakePeer) -> None:
        peer.accept_association()
        peer.read_message()
        if reply:
            peer.send(reply)
        if reply[:1] == b"\x05":
            peer.read_pdu()

    peer = fake_peer(script)
    with pytest.raises(AssociationAbortedError, match=match):
        store_once(peer.port)
    peer.finish()

    assert peer.received[-1] == last_from_us


def test_fake_peer_stops_reading(
    fake_peer: Callable[..., FakePeer], tmp_path: Path
) -> None:
    """A receiver that stops reading mid-file trips the network timeout on send."""
    payload = write_large_dataset(tmp_path / "big.dcm", "1.2.3", 32 * 1024 * 1024)
    stop = threading.Event()

    def script(peer: FakePeer) -> None:
        peer.accept_association()
        stop.wait(10)

    peer = fake_peer(script)
    timeouts = Timeouts(connect=5, acse=5, dimse=5, network=0.5)
    assoc = open_association(peer.port, [ContextRequest(SECONDARY_CAPTURE,
                                                       (EXPLICIT,))],
                             timeouts=timeouts)
    with pytest.raises(AssociationTimeoutError,
                       match=r"Timed out sending the C-STORE-RQ \(message ID 1\) to "
                             r"127\.0\.0\.1:\d+: the receiver read nothing for the "
                             r"network timeout of 0\.5 s"):
        assoc.send_c_store(1, SECONDARY_CAPTURE, "1.2.3", payload)
    stop.set()
    peer.finish()

    assert not assoc.is_alive


def test_fake_peer_release_collision(fake_peer: Callable[..., FakePeer]) -> None:
    """When both sides request release, we confirm theirs and wait for ours."""
    def script(peer: FakePeer) -> None:
        peer.accept_association()
        peer.send(pynetdicom_response(peer.read_message()))
        assert peer.read_pdu()[0] == pdu.A_RELEASE_RQ
        peer.send(pdu.encode_release_rq())
        assert peer.read_pdu()[0] == pdu.A_RELEASE_RP
        peer.send(pdu.encode_release_rp())
        peer.wait_for_close()

    peer = fake_peer(script)
    assoc = store_once(peer.port)
    assoc.release()
    peer.finish()

    assert not assoc.is_alive
    assert peer.received == [pdu.A_ASSOCIATE_RQ, pdu.P_DATA_TF, pdu.P_DATA_TF,
                             pdu.A_RELEASE_RQ, pdu.A_RELEASE_RP]


def test_fake_peer_release_timeout(fake_peer: Callable[..., FakePeer]) -> None:
    """No A-RELEASE-RP within the ACSE timeout aborts and names the wait."""
    def script(peer: FakePeer) -> None:
        peer.accept_association()
        peer.wait_for_close()

    peer = fake_peer(script)
    assoc = open_association(peer.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))],
                             timeouts=Timeouts(connect=5, acse=0.3, dimse=5, network=5))
    with pytest.raises(AssociationTimeoutError,
                       match=r"A-RELEASE-RP .*ACSE timeout of 0\.3 s"):
        assoc.release()
    peer.finish()

    assert peer.received[-2:] == [pdu.A_RELEASE_RQ, pdu.A_ABORT]


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        (None, ConnectionFailedError,
         r"could not establish association with 127\.0\.0\.1:\d+ \(no A-ASSOCIATE "
         r"response within the ACSE timeout of 0\.3 s\)"),
        (b"", ConnectionFailedError,
         r"could not establish association with 127\.0\.0\.1:\d+ \(the receiver "
         r"closed the connection\)"),
        (pdu.encode_abort(2, 0), ConnectionFailedError,
         r"A-ABORT instead of A-ASSOCIATE-AC or -RJ, source: service provider, "
         r"reason: reason "
         r"not specified"),
        (b"\x09\x00\x00\x00\x00\x00", ProtocolError, "unknown PDU type 0x09"),
        (pdu.encode_release_rp(), ProtocolError, "received A-RELEASE-RP"),
        (b"\x02\x00\x00\x00\x00\x0a" + bytes(10), ProtocolError,
         "shorter than its 68 bytes"),
    ],
    ids=["silent", "close", "abort", "unknown-type", "release-rp", "truncated-ac"],
)
def test_fake_peer_bad_association_answers(
    fake_peer: Callable[..., FakePeer], reply: bytes | None,
    error: type[Exception], match: str,
) -> None:
    """Every response but A-ASSOCIATE-AC or -RJ fails the open with a clear error."""
    def script(peer: FakePeer) -> None:
        assert peer.read_pdu()[0] == pdu.A_ASSOCIATE_RQ
        if reply is None:
            peer.wait_for_close()
        elif reply:
            peer.send(reply)
            peer.wait_for_close()

    peer = fake_peer(script)
    with pytest.raises(error, match=match):
        open_association(peer.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))],
                         timeouts=Timeouts(connect=5, acse=0.3, dimse=5, network=5))
    peer.finish()


def test_fake_peer_small_max_pdu_fragments(fake_peer: Callable[..., FakePeer]) -> None:
    """Data sets are split to the peer's max PDU length and reassemble exactly."""
    payload = encode_dataset(CT_IMAGE, "1.2.3", os.urandom(10_000))
    received = BytesIO()

    def script(peer: FakePeer) -> None:
        peer.accept_association(max_pdu=1000)
        last = False
        while not last:
            pdu_type, body = peer.read_pdu()
            assert len(body) <= 1000
            for _, control, data in pdu.decode_pdata(body):
                if not control & pdu.PDV_COMMAND:
                    received.write(data)
                    last = bool(control & pdu.PDV_LAST_FRAGMENT)
        peer.send(pynetdicom_response(1))
        peer.wait_for_close()

    peer = fake_peer(script)
    assoc = open_association(peer.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))])
    status = assoc.send_c_store(1, CT_IMAGE, "1.2.3", payload)
    assoc.abort()
    peer.finish()

    assert status.status == 0
    assert received.getvalue() == payload
    assert peer.received[-1] == pdu.A_ABORT


def test_missing_file_raises_file_error_and_keeps_association(
    fake_peer: Callable[..., FakePeer], tmp_path: Path
) -> None:
    """An unreadable FileSlice fails before sending, so the association lives on."""
    def script(peer: FakePeer) -> None:
        peer.accept_association()
        peer.send(pynetdicom_response(peer.read_message()))
        peer.wait_for_close()

    peer = fake_peer(script)
    assoc = open_association(peer.port, [ContextRequest(CT_IMAGE, (EXPLICIT,))])
    missing = tmp_path / "missing.dcm"
    with pytest.raises(FileError, match=re.escape(f"Unable to read '{missing}'")):
        assoc.send_c_store(1, CT_IMAGE, "1.2.3", FileSlice(missing, 0, 10))
    short = tmp_path / "short.dcm"
    short.write_bytes(b"abc")
    with pytest.raises(FileError, match="ended after 3 bytes, expected 10"):
        assoc.send_c_store(1, CT_IMAGE, "1.2.3", FileSlice(short, 0, 10))
    status = assoc.send_c_store(1, CT_IMAGE, "1.2.3", encode_dataset(CT_IMAGE, "1.2.3"))
    assoc.abort()
    peer.finish()

    assert status.status == 0
