"""A hung receiver, and a caller killed with SIGKILL: nothing waits forever."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, AllStoragePresentationContexts, evt

from engine import StoreScu

FILE_COUNT = 10


class HungScp:
    """A pynetdicom storage SCP that responds to each C-STORE only after ``delay`` s."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        ae = AE(ae_title="HUNG")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.maximum_associations = 16
        self.ae = ae
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.requests += 1
        self._release.wait(self.delay)
        return 0x0000

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.ae.shutdown()


@pytest.fixture
def hung_scp() -> Iterator[HungScp]:
    scp = HungScp(delay=30.0)
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    source = Path(get_testdata_file("CT_small.dcm", download=False))
    for index in range(FILE_COUNT):
        shutil.copy(source, folder / f"copy{index}.dcm")
    return folder


def test_hung_receiver_gets_three_files(hung_scp: HungScp, batch: Path) -> None:
    scu = StoreScu(f"127.0.0.1:{hung_scp.port}", dimse_timeout=0.5, retries=0)
    scu.add_directory(batch)

    result = scu.send()

    assert result.total_files == FILE_COUNT
    assert result.successful == 0
    assert result.failed == FILE_COUNT
    assert hung_scp.requests == 3
    errors = [failure.error for failure in result.failures]
    timed_out = [error for error in errors if "after 1 attempt: Timed out waiting "
                 "for the C-STORE-RSP" in error]
    stopped = [error for error in errors
               if "every association with 127.0.0.1" in error
               and "was lost or stopped answering" in error]
    assert len(timed_out) == 3
    assert len(stopped) == FILE_COUNT - 3


def test_children_exit_when_caller_is_killed(hung_scp: HungScp, batch: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "send", "--no-progress", "-j", "2",
         f"127.0.0.1:{hung_scp.port}", str(batch)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while hung_scp.requests < 2:
        assert process.poll() is None, "the sender stopped before sending"
        assert time.monotonic() < deadline, "no C-STORE arrived"
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 2

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    exited, alive = psutil.wait_procs(children, timeout=10)

    for child in alive:
        child.kill()
    assert alive == [], f"processes left running: {[c.pid for c in alive]}"
    assert len(exited) == len(children)
