"""Transcoding on a dask.distributed cluster: ``scheduler=`` and ``--scheduler``.

The cluster is a ``LocalCluster`` of two worker processes on 127.0.0.1,
shared by the module and always closed. The main cases send pydicom's test
files and the real-file corpus, forced to JPEG 2000 Lossless and to RLE
Lossless, once with local worker processes and once through the cluster,
to DCMTK's storescp. The cluster's run must fail the same files with the
same messages as the local one, and store, for every file it reports as
sent, an object with the same SOP Instance UID and equal decoded pixels.

Without dask.distributed these tests are skipped, except under CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from e2e_support import (
    PYDICOM_TEST_FILES,
    instance_uid,
    load_receivers,
    pixels,
    read,
    received_files,
)
from engine import EventType, StoreScu
from engine.events import FileFailed
from engine.jobs import ReadyFile, TranscodeJob
from transcode.errors import TranscodeError

pytestmark = pytest.mark.dcmtk
receivers = load_receivers()

STORESCP_ACCEPT_ALL = ("+xa", "-pm", "--fork", "+uf", "+B")
MEMORY_NAME = "memory/CT_small.dcm"
# A 1-bit image: no compressed syntax can hold it, so it fails on the cluster
# as it fails locally.
ONE_BIT_FILE = PYDICOM_TEST_FILES / "liver_1frame.dcm"


@pytest.fixture(scope="module")
def distributed() -> ModuleType:
    """The dask.distributed package; missing, it skips, or fails under CI."""
    try:
        import distributed
    except ImportError:
        message = ("dask.distributed is not installed; install the test extra "
                   "(pip install -e '.[test]')")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return distributed


def local_cluster(distributed: ModuleType, n_workers: int, processes: bool) -> Any:
    """Start a LocalCluster that listens on 127.0.0.1 only, on free ports.

    Without a dashboard the scheduler still serves its health routes over
    HTTP, on port 8787 by default. Port 0 takes a free one.
    """
    return distributed.LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=processes,
        protocol="tcp", host="127.0.0.1", dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0", "dashboard": False},
        memory_limit="1GiB",
    )


@pytest.fixture(scope="module")
def cluster(distributed: ModuleType) -> Iterator[Any]:
    """Two single-threaded worker processes and a scheduler on 127.0.0.1."""
    running = local_cluster(distributed, n_workers=2, processes=True)
    try:
        yield running
    finally:
        running.close(timeout=30)


def start_storescp(out_dir: Path) -> Any:
    out_dir.mkdir()
    return receivers.start_storescp(out_dir, *STORESCP_ACCEPT_ALL)


class EventLog:
    """Every callback event in the order the callbacks were called."""

    def __init__(self) -> None:
        self.events: list[tuple[EventType, str | None]] = []

    def callbacks(self) -> dict[str, Any]:
        def record(err: Exception | None, event: Any) -> None:
            assert err is None
            self.events.append((event.type, event.data.get("file")))

        return {name: record for name in (
            "on_transfer_started", "on_file_sending", "on_file_sent",
            "on_file_error", "on_transfer_completed")}

    def check_exactly_once(self, result: Any) -> None:
        """Check the order of the events and one outcome per file."""
        kinds = [kind for kind, _ in self.events]
        assert kinds[0] is EventType.TRANSFER_STARTED
        assert kinds[-1] is EventType.TRANSFER_COMPLETED
        assert kinds.count(EventType.TRANSFER_STARTED) == 1
        assert kinds.count(EventType.TRANSFER_COMPLETED) == 1

        sending: Counter[str | None] = Counter()
        outcomes: Counter[str | None] = Counter()
        for kind, name in self.events[1:-1]:
            if kind is EventType.FILE_SENDING:
                assert outcomes[name] == 0, f"'{name}' sending after its outcome"
                sending[name] += 1
            else:
                assert sending[name] == 1, f"'{name}' has an outcome before sending"
                outcomes[name] += 1
        assert set(outcomes.values()) == {1}
        assert set(sending.values()) == {1}
        assert len(outcomes) == result.total_files
        assert kinds.count(EventType.FILE_SENT) == result.successful
        assert kinds.count(EventType.FILE_ERROR) == result.failed


def queue_inputs(scu: StoreScu, corpus_dir: Path) -> None:
    scu.add_directory(PYDICOM_TEST_FILES)
    scu.add_directory(corpus_dir)
    scu.add_file_from_memory((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes(),
                             MEMORY_NAME)


def pixel_digest(path: Path | str) -> str:
    """Return a digest of the decoded pixels, or of the bytes if undecodable."""
    dataset = read(path)
    if "PixelData" not in dataset:
        return "no pixel data"
    try:
        array = np.asarray(pixels(dataset)).reshape(-1)
    except (TranscodeError, ValueError, RuntimeError, NotImplementedError):
        return "encoded " + hashlib.sha1(dataset.PixelData).hexdigest()
    if array.dtype.kind in "iub":
        array = array.astype(np.int64)
    return hashlib.sha1(array.tobytes()).hexdigest()


def ran_on_cluster(caplog: pytest.LogCaptureFixture, address: str) -> int:
    """Return the number of tasks logged as run on the cluster at ``address``."""
    pattern = re.compile(rf"Ran (\d+) transcode task\(s\) on the Dask cluster at "
                         rf"{re.escape(address)},")
    counts = [int(match.group(1)) for record in caplog.records
              if (match := pattern.match(record.getMessage()))]
    assert len(counts) == 1, caplog.text[-2000:]
    return counts[0]


def source_path(name: str) -> Path:
    return PYDICOM_TEST_FILES / "CT_small.dcm" if name == MEMORY_NAME else Path(name)


# Sending through the cluster


@pytest.mark.slow
@pytest.mark.parametrize("target", [JPEG2000Lossless, RLELossless],
                         ids=["JPEG2000Lossless", "RLELossless"])
def test_cluster_matches_local_processes(cluster: Any, corpus_dir: Path,
                                         tmp_path: Path, target: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """Send the samples locally and through Dask; compare outcomes and arrivals."""
    caplog.set_level(logging.INFO, logger="engine")
    with start_storescp(tmp_path / "local") as scp:
        local = StoreScu(f"127.0.0.1:{scp.port}", transfer_syntax=target,
                         concurrency=2, transcode_workers=2)
        queue_inputs(local, corpus_dir)
        local_result = local.send()

    caplog.clear()
    log = EventLog()
    with start_storescp(tmp_path / "dask") as scp:
        scu = StoreScu(f"127.0.0.1:{scp.port}", transfer_syntax=target,
                       concurrency=2, scheduler=cluster.scheduler_address)
        queue_inputs(scu, corpus_dir)
        result = scu.send(**log.callbacks())
        stored = received_files(scp.out_dir)

    # The files were re-encoded on the cluster, not by local workers.
    tasks_run = ran_on_cluster(caplog, cluster.scheduler_address)
    assert 0 < tasks_run < result.total_files
    assert "transcode worker(s)" not in caplog.text

    # The same outcomes, failures and messages as local processes give.
    assert result.total_files == local_result.total_files
    assert result.successful == local_result.successful
    assert result.failed == local_result.failed
    failures = {failure.file: failure.error for failure in result.failures}
    local_failures = {failure.file: failure.error
                      for failure in local_result.failures}
    assert failures == local_failures
    assert "cannot represent bit-packed pixels" in failures[str(ONE_BIT_FILE)]
    assert result.successful + result.failed == result.total_files
    log.check_exactly_once(result)

    # One stored object per file sent, with its SOP Instance UID and pixels.
    assert len(stored) == result.successful
    sent = [name for kind, name in log.events
            if kind is EventType.FILE_SENT and name is not None]
    expected = Counter((instance_uid(read(source_path(name))),
                        pixel_digest(source_path(name))) for name in sent)
    arrived = Counter((instance_uid(read(path)), pixel_digest(path))
                      for path in stored)
    assert arrived == expected


def test_memory_and_unchanged_files(cluster: Any, storescp: Any,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A file from memory and one already in the target syntax both arrive."""
    caplog.set_level(logging.INFO, logger="engine")
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transfer_syntax=RLELossless,
                   scheduler=cluster.scheduler_address)
    scu.add_file(PYDICOM_TEST_FILES / "MR_small_RLE.dcm")
    scu.add_file_from_memory((PYDICOM_TEST_FILES / "MR_small.dcm").read_bytes(),
                             "upload.dcm")
    sent_syntaxes: dict[str, str] = {}

    def on_file_sent(err: Exception | None, event: Any) -> None:
        sent_syntaxes[event.data["file"]] = event.data["transfer_syntax"]

    result = scu.send(on_file_sent=on_file_sent)

    assert (result.successful, result.failed) == (2, 0)
    # Only the file from memory needed re-encoding.
    assert ran_on_cluster(caplog, cluster.scheduler_address) == 1
    assert set(sent_syntaxes.values()) == {RLELossless}
    stored = received_files(storescp.out_dir)
    arrived = sorted(pixel_digest(path) for path in stored)
    expected = sorted(pixel_digest(PYDICOM_TEST_FILES / name)
                      for name in ("MR_small_RLE.dcm", "MR_small.dcm"))
    assert arrived == expected


def test_unreadable_file_fails_as_locally(cluster: Any, storescp: Any,
                                          tmp_path: Path) -> None:
    """A file removed after it was added fails with the local message."""
    copies = []
    for label in ("local", "dask"):
        copy = tmp_path / f"{label}.dcm"
        copy.write_bytes((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
        copies.append(copy)
    local = StoreScu(f"127.0.0.1:{storescp.port}", transfer_syntax=RLELossless,
                     transcode_workers=1)
    local.add_file(copies[0])
    on_dask = StoreScu(f"127.0.0.1:{storescp.port}", transfer_syntax=RLELossless,
                       scheduler=cluster.scheduler_address)
    on_dask.add_file(copies[1])
    for copy in copies:
        copy.unlink()

    local_error = local.send().failures[0].error
    dask_error = on_dask.send().failures[0].error

    assert dask_error == local_error.replace("local.dcm", "dask.dcm")
    assert "check that the file still exists and is readable" in dask_error


# Errors


def test_unreachable_scheduler_names_address(distributed: ModuleType,
                                             storescp: Any) -> None:
    from engine.dask_backend import DaskSchedulerError

    address = f"tcp://127.0.0.1:{receivers.free_port()}"
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transfer_syntax=RLELossless,
                   scheduler=address, connect_timeout=2)
    scu.add_file(PYDICOM_TEST_FILES / "CT_small.dcm")

    started = time.monotonic()
    with pytest.raises(DaskSchedulerError,
                       match=rf"Unable to connect to the Dask scheduler at {address}"):
        scu.send()
    assert time.monotonic() - started < 20
    assert received_files(storescp.out_dir) == []


def test_scheduler_without_workers(distributed: ModuleType, storescp: Any) -> None:
    from engine.dask_backend import DaskSchedulerError

    with local_cluster(distributed, n_workers=0, processes=False) as empty:
        scu = StoreScu(f"127.0.0.1:{storescp.port}", transfer_syntax=RLELossless,
                       scheduler=empty.scheduler_address, connect_timeout=1)
        scu.add_file(PYDICOM_TEST_FILES / "CT_small.dcm")
        with pytest.raises(DaskSchedulerError,
                           match=r"has no workers: none joined within 1 s"):
            scu.send()


def test_workers_gone_fails_waiting_files(distributed: ModuleType,
                                          tmp_path: Path) -> None:
    """Files waiting on a cluster that lost every worker fail; nothing hangs."""
    from engine.dask_backend import DaskTranscoder, TaskSettings

    failed: list[FileFailed] = []
    stop = threading.Event()
    job = TranscodeJob(0, "CT_small.dcm", str(PYDICOM_TEST_FILES / "CT_small.dcm"),
                       "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1",
                       RLELossless)
    with local_cluster(distributed, n_workers=1, processes=False) as small:
        transcoder = DaskTranscoder(
            small.scheduler_address, TaskSettings(RLELossless, False, False),
            str(tmp_path), stop, deliver=lambda item: True, fail=failed.append,
            connect_timeout=10, no_workers_timeout=1)
        with transcoder:
            transcoder.connect()
            small.scale(0)
            deadline = time.monotonic() + 10
            while transcoder.client.nthreads() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert transcoder.submit(job, (PYDICOM_TEST_FILES / "CT_small.dcm")
                                     .read_bytes())
            deadline = time.monotonic() + 20
            while not failed and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()

    assert len(failed) == 1
    assert failed[0].job_id == 0
    assert "its cluster has had no workers for 1 s" in failed[0].error


def test_tasks_in_flight_are_bounded(cluster: Any, tmp_path: Path) -> None:
    """At most two tasks per worker thread are out at once; all are delivered."""
    from engine.dask_backend import DaskTranscoder, TaskSettings

    delivered: list[ReadyFile] = []
    failed: list[FileFailed] = []

    def deliver(item: ReadyFile) -> bool:
        time.sleep(0.05)  # a slow ready queue keeps results waiting
        delivered.append(item)
        return True

    data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    stop = threading.Event()
    with DaskTranscoder(cluster.scheduler_address,
                        TaskSettings(RLELossless, False, False), str(tmp_path),
                        stop, deliver=deliver, fail=failed.append) as transcoder:
        transcoder.connect()
        for job_id in range(12):
            job = TranscodeJob(job_id, f"{job_id}.dcm", f"{job_id}.dcm",
                               "1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{job_id}",
                               "1.2.840.10008.1.2.1", RLELossless)
            assert transcoder.submit(job, data)
        deadline = time.monotonic() + 60
        while len(delivered) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()

    assert transcoder.max_in_flight == 4
    assert 1 <= transcoder.peak_in_flight <= 4
    assert failed == []
    assert sorted(item.job_id for item in delivered) == list(range(12))
    assert all(Path(item.path).stat().st_size == item.length for item in delivered)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", r"Invalid scheduler '': expected 'tcp://host:port'"),
        ("127.0.0.1", r"Invalid scheduler '127\.0\.0\.1': the port is missing"),
        ("tls://127.0.0.1:8786", r"only tcp:// schedulers are supported, not tls://"),
        ("tcp://127.0.0.1:99999", r"the port must be a number from 1 to 65535"),
        ("tcp://[::1", r"an IPv6 address needs the form"),
        (8786, r"Invalid scheduler 8786: expected 'tcp://host:port'"),
    ],
)
def test_invalid_scheduler_rejected(distributed: ModuleType, value: Any,
                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StoreScu("127.0.0.1:11112", scheduler=value)


@pytest.mark.parametrize(
    ("value", "normalized"),
    [("127.0.0.1:8786", "tcp://127.0.0.1:8786"),
     ("TCP://[::1]:8786", "tcp://[::1]:8786"),
     (" tcp://localhost:1 ", "tcp://localhost:1")],
)
def test_scheduler_address_normalized(distributed: ModuleType, value: str,
                                      normalized: str) -> None:
    assert StoreScu("127.0.0.1:11112", scheduler=value).options.scheduler == normalized


def test_missing_dask_is_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *args: None if name == "distributed"
        else real_find_spec(name, *args))
    with pytest.raises(ImportError, match=r"pip install 'dicomsend\[dask\]'"):
        StoreScu("127.0.0.1:11112", scheduler="tcp://127.0.0.1:8786")


# Command line


def dicomsend(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_cli_sends_through_scheduler(cluster: Any, storescp: Any) -> None:
    result = dicomsend("send", f"127.0.0.1:{storescp.port}",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"),
                       str(PYDICOM_TEST_FILES / "MR_small.dcm"),
                       "-t", "JPEG2000Lossless", "-j", "2",
                       "--scheduler", cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    assert "Stored 2 of 2 files, 0 failed" in result.stdout
    assert len(received_files(storescp.out_dir)) == 2


def test_cli_unreachable_scheduler_exits_3(distributed: ModuleType,
                                           storescp: Any) -> None:
    address = f"tcp://127.0.0.1:{receivers.free_port()}"
    result = dicomsend("send", f"127.0.0.1:{storescp.port}",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"), "-t", "RLELossless",
                       "--scheduler", address, "--connect-timeout", "2")
    assert result.returncode == 3
    assert f"Error: Unable to connect to the Dask scheduler at {address}" in (
        result.stderr)


def test_cli_invalid_scheduler_exits_2(distributed: ModuleType) -> None:
    result = dicomsend("send", "127.0.0.1:11112",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"),
                       "--scheduler", "udp://127.0.0.1:8786")
    assert result.returncode == 2
    assert "Invalid --scheduler 'udp://127.0.0.1:8786'" in result.stderr
