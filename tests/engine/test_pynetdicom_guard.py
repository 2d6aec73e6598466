"""Tests of engine.pynetdicom_guard: the reactor pause race of pynetdicom 3.0.x.

The race needs a ``send_c_*`` call to clear the reactor checkpoint in the
short gap between the reactor's ``wait()`` returning and the reactor
clearing its ``_is_paused`` flag, and the response to arrive before the
reactor reads the DIMSE queue. Left to chance it is rare: on a 2-core
machine, 2 of 25 runs of 4 processes sending 300 C-STOREs each to
``storescp --fork`` with TCP_NODELAY stalled. ``RaceWideningCheckpoint``
holds the reactor in that gap until a sender has cleared the checkpoint and
the response is on the queue, so every request sent while the reactor is
held meets the race (7 to 9 of 20 in repeated runs). Everything else is
real: a pynetdicom SCU sends C-STOREs over TCP to DCMTK's storescp.
"""

from __future__ import annotations

import inspect
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from engine import pynetdicom_guard
from engine.pynetdicom_guard import (
    install_reactor_guard,
    is_reactor_guard_installed,
    remove_reactor_guard,
)

STORESCP = Path("/usr/bin/storescp")
DIMSE_TIMEOUT = 2.0
MESSAGES = 20
# How long the reactor is held in the gap at most, in seconds. Any request
# sent while it is held meets the race. A longer hold only slows the release
# at the end of the association.
HOLD_LIMIT = 0.5

needs_pynetdicom_30 = pytest.mark.skipif(
    not pynetdicom.__version__.startswith("3.0."),
    reason=f"the guard patches pynetdicom 3.0.x only, not {pynetdicom.__version__}",
)


class RaceWideningCheckpoint(threading.Event):
    """Reactor checkpoint that widens the gap in which the pause race happens.

    After the real ``wait()`` returns, the reactor still has ``_is_paused``
    True. This wait then blocks until a ``send_c_*`` call has cleared the
    checkpoint (having seen that stale flag) and the response to its request
    is on the DIMSE queue, or until ``HOLD_LIMIT`` seconds have passed.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self.set()
        self._queue = assoc.dimse.msg_queue
        self.races = 0

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        deadline = time.monotonic() + HOLD_LIMIT
        while time.monotonic() < deadline:
            if not self.is_set() and not self._queue.empty():
                self.races += 1
                break
            time.sleep(0.0002)
        return result


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_listener(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited early with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"storescp did not listen on port {port} within 10 s")


@pytest.fixture
def storescp_port(tmp_path: Path) -> Iterator[int]:
    """Start DCMTK's storescp on a free loopback port; stop it afterwards."""
    if not STORESCP.exists():
        pytest.skip(f"DCMTK storescp not found at {STORESCP}")

    port = _free_port()
    process = subprocess.Popen(
        [str(STORESCP), "--ignore", "-od", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_listener(port, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def restore_reactor() -> Iterator[None]:
    """Put back whichever reactor loop was in place before the test."""
    was_installed = is_reactor_guard_installed()
    yield
    if was_installed:
        install_reactor_guard()
    else:
        remove_reactor_guard()


def _small_image() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Guard^Test"
    ds.Modality = "OT"
    ds.Rows = 2
    ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(4)
    return ds


def _send_with_widened_race(port: int) -> tuple[list[Dataset], Association, int]:
    """Send MESSAGES C-STOREs on one association; return statuses and races."""
    ae = AE(ae_title="GUARD-SCU")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.acse_timeout = 5
    ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="ANY-SCP")
    assert assoc.is_established

    checkpoint = RaceWideningCheckpoint(assoc)
    assoc._reactor_checkpoint = checkpoint
    statuses = []
    try:
        for _ in range(MESSAGES):
            statuses.append(assoc.send_c_store(_small_image()))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return statuses, assoc, checkpoint.races


@pytest.mark.dcmtk
@needs_pynetdicom_30
def test_race_stalls_without_guard(
    storescp_port: int, restore_reactor: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Unguarded, the reactor takes the C-STORE-RSP and the sender times out."""
    remove_reactor_guard()
    caplog.set_level(logging.WARNING, logger="pynetdicom")

    started = time.monotonic()
    statuses, assoc, races = _send_with_widened_race(storescp_port)
    elapsed = time.monotonic() - started

    # Every request before the first race got its response; the request that
    # met the race lost it and waited out the DIMSE timeout.
    assert races == 1
    assert [status.Status for status in statuses[:-1]] == [0x0000] * (
        len(statuses) - 1
    )
    assert "Status" not in statuses[-1]
    assert assoc.is_aborted
    assert elapsed >= DIMSE_TIMEOUT
    assert "Received unexpected C-STORE service message" in caplog.text
    assert "DIMSE timeout reached" in caplog.text


@pytest.mark.dcmtk
@needs_pynetdicom_30
def test_guard_prevents_stall(
    storescp_port: int, restore_reactor: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Guarded, every request hits the same interleaving and gets its response."""
    assert install_reactor_guard()
    caplog.set_level(logging.WARNING, logger="pynetdicom")

    started = time.monotonic()
    statuses, assoc, races = _send_with_widened_race(storescp_port)
    elapsed = time.monotonic() - started

    print(f"{races} of {MESSAGES} requests met the race")
    assert races >= 1
    assert [status.Status for status in statuses] == [0x0000] * MESSAGES
    assert assoc.is_released
    assert not assoc.is_aborted
    assert elapsed < DIMSE_TIMEOUT
    assert "Received unexpected" not in caplog.text
    assert "DIMSE timeout" not in caplog.text


@needs_pynetdicom_30
def test_install_is_idempotent(restore_reactor: None) -> None:
    """A second install leaves the guarded loop in place."""
    remove_reactor_guard()
    original = Association._run_reactor

    assert install_reactor_guard()
    guarded = Association._run_reactor
    assert install_reactor_guard()

    assert Association._run_reactor is guarded
    assert guarded is not original
    assert is_reactor_guard_installed()


@needs_pynetdicom_30
def test_remove_restores_original(restore_reactor: None) -> None:
    """remove_reactor_guard puts pynetdicom's own loop back."""
    remove_reactor_guard()
    original = Association._run_reactor
    install_reactor_guard()

    remove_reactor_guard()

    assert Association._run_reactor is original
    assert not is_reactor_guard_installed()


def test_other_versions_left_alone(
    monkeypatch: pytest.MonkeyPatch,
    restore_reactor: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a pynetdicom other than 3.0.x nothing is patched and DEBUG says why."""
    remove_reactor_guard()
    original = Association._run_reactor
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    caplog.set_level(logging.DEBUG, logger=pynetdicom_guard.__name__)

    assert not install_reactor_guard()

    assert Association._run_reactor is original
    assert "pynetdicom 3.1.0 is not a 3.0.x release" in caplog.text


@needs_pynetdicom_30
def test_guarded_loop_differs_only_by_check() -> None:
    """The copied loop is pynetdicom 3.0.x's loop plus the checkpoint re-check."""
    original = inspect.getsource(pynetdicom_guard._UNGUARDED_RUN_REACTOR)
    guarded = inspect.getsource(pynetdicom_guard._guarded_run_reactor)

    def statements(source: str) -> list[str]:
        lines = [line.split("#", 1)[0].strip() for line in source.splitlines()]
        body = [line for line in lines if line]
        start = body.index("self._is_paused = False")
        return [
            line.replace("LOGGER", "_pynetdicom_logger")
            for line in body[start:]
        ]

    added = ["if not self._reactor_checkpoint.is_set():", "continue"]
    guarded_statements = statements(guarded)
    index = guarded_statements.index(added[0])
    del guarded_statements[index : index + len(added)]
    assert guarded_statements == statements(original)

