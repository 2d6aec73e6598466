"""The resume journal against DCMTK storescp: reruns, changed files, kill -9."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from e2e_support import load_receivers
from engine import StoreScu

start_storescp = load_receivers().start_storescp

FILE_COUNT = 600


def _make_batch(folder: Path, count: int) -> dict[str, Path]:
    """Write ``count`` copies of CT_small.dcm, each with its own SOP Instance UID."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    folder.mkdir()
    written = {}
    for index in range(count):
        uid = generate_uid()
        template.SOPInstanceUID = uid
        template.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"ct{index:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        written[uid] = path
    return written


def _journalled(journal: Path) -> int:
    """Return how many stored outcomes the journal has committed so far."""
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(journal, timeout=1) as connection:
            row = connection.execute(
                "SELECT COUNT(*) FROM outcomes WHERE status = 'stored'"
            ).fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def _received_uids(out_dir: Path) -> list[str]:
    return [
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        for path in out_dir.iterdir()
        if path.is_file()
    ]


def test_rerun_with_journal_sends_nothing_twice(tmp_path: Path) -> None:
    batch = _make_batch(tmp_path / "in", 20)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    journal = tmp_path / "journal.sqlite"

    with start_storescp(out_dir, "+xa", "+uf") as scp:
        first = StoreScu(f"127.0.0.1:{scp.port}", journal=journal)
        first.add_directory(tmp_path / "in")
        first_result = first.send()

        second = StoreScu(f"127.0.0.1:{scp.port}", journal=journal)
        second.add_directory(tmp_path / "in")
        second_result = second.send()

    assert first_result.successful == 20
    assert first_result.total_files == 20
    assert second_result.total_files == 0
    assert second_result.already_stored == 20
    assert sorted(_received_uids(out_dir)) == sorted(batch)


def test_journal_resends_changed_file(tmp_path: Path) -> None:
    batch = _make_batch(tmp_path / "in", 5)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    journal = tmp_path / "journal.sqlite"
    changed = sorted(batch.values())[0]

    with start_storescp(out_dir, "+xa", "+uf") as scp:
        first = StoreScu(f"127.0.0.1:{scp.port}", journal=journal)
        first.add_directory(tmp_path / "in")
        first.send()

        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        second = StoreScu(f"127.0.0.1:{scp.port}", journal=journal)
        second.add_directory(tmp_path / "in")
        sent: list[str] = []
        result = second.send(on_file_sent=lambda err, event: sent.append(
            event.data["file"]))

    assert result.total_files == 1
    assert result.already_stored == 4
    assert sent == [str(changed)]


def test_journal_not_sqlite_is_rejected(tmp_path: Path) -> None:
    _make_batch(tmp_path / "in", 1)
    bogus = tmp_path / "journal.txt"
    bogus.write_text("not a database\n" * 100)
    with pytest.raises(ValueError, match="Invalid journal .*journal.txt"):
        StoreScu("127.0.0.1:11112", journal=bogus)


def test_kill_mid_batch_then_rerun_loses_nothing(tmp_path: Path) -> None:
    batch = _make_batch(tmp_path / "in", FILE_COUNT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    journal = tmp_path / "journal.sqlite"
    command = [sys.executable, "-m", "engine.cli", "send", "--no-progress",
               "--journal", str(journal)]

    with start_storescp(out_dir, "+xa", "+uf") as scp:
        address = f"127.0.0.1:{scp.port}"
        process = subprocess.Popen(
            [*command, address, str(tmp_path / "in")],
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        # Kill once the receiver has a quarter of the files and the journal
        # has committed some outcomes, which can lag behind under load.
        while (len(list(out_dir.iterdir())) < FILE_COUNT // 4
               or _journalled(journal) == 0):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "storescp received too little"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        time.sleep(0.5)  # let storescp finish writing a file that was in flight
        received_before = len(list(out_dir.iterdir()))

        rerun = subprocess.run(
            [*command, address, str(tmp_path / "in")],
            capture_output=True, text=True, timeout=120,
        )

    assert received_before < FILE_COUNT, "the kill came after the batch ended"
    assert rerun.returncode == 0, rerun.stderr
    summary = re.search(r"Stored (\d+) of (\d+) files, 0 failed.*?"
                        r"(\d+) already stored \(journal\)", rerun.stdout)
    assert summary, rerun.stdout
    stored, total, already_stored = map(int, summary.groups())
    assert stored == total
    assert total + already_stored == FILE_COUNT
    assert 0 < already_stored <= received_before
    received = _received_uids(out_dir)
    assert set(received) == set(batch)
    # The rerun sent exactly the files the journal did not show as stored.
    assert len(received) == received_before + total
