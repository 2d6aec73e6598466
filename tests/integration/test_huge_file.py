"""A 1 GB multi-frame object is streamed from disk, not loaded into memory.

The file is written sparsely: a real CT header from pydicom's samples, then
a Pixel Data element of 1 GiB whose value the file system fills with zeros.
The send runs in a separate ``python -m engine.cli`` process so that the RSS
sampled is that of dicomsend's processes alone: the command and the sender
and worker processes it starts.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pydicom
import pytest
from e2e_support import PROJECT_ROOT, PYDICOM_TEST_FILES, load_receivers

receivers = load_receivers()
pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

FRAME_ROWS = FRAME_COLUMNS = 512
FRAMES = 2048  # 2048 frames of 512 x 512 x 16 bits: 1 GiB of pixel data
PEAK_RSS_LIMIT = 300 * 1024 * 1024


def write_huge_file(path: Path) -> int:
    """Write a sparse multi-frame CT of 1 GiB of pixel data; return its size."""
    dataset = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    # Pixel Data is appended last, so nothing may follow it: drop the
    # sample's Data Set Trailing Padding (FFFC,FFFC).
    del dataset.PixelData
    del dataset[0xFFFC_FFFC]
    dataset.Rows, dataset.Columns = FRAME_ROWS, FRAME_COLUMNS
    dataset.NumberOfFrames = FRAMES
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path)

    length = FRAME_ROWS * FRAME_COLUMNS * 2 * FRAMES
    with path.open("r+b") as fileobj:
        fileobj.seek(0, 2)
        fileobj.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length))
        fileobj.truncate(fileobj.tell() + length)
    return path.stat().st_size


class RssSampler:
    """Sample the summed RSS of a process and all its children every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.samples = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            total = 0
            try:
                for process in [self.process, *self.process.children(recursive=True)]:
                    try:
                        total += process.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self.samples += 1
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join()


def test_huge_file_streamed(tmp_path: Path) -> None:
    """1 GiB of pixel data is sent with under 300 MB of RSS in all processes."""
    huge = tmp_path / "huge.dcm"
    size = write_huge_file(huge)
    out = tmp_path / "scp"
    out.mkdir()

    with receivers.start_storescp(out, "--ignore", "-v") as scp:
        command = [sys.executable, "-m", "engine.cli", "send",
                   f"127.0.0.1:{scp.port}", str(huge), "--no-progress"]
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        with RssSampler(process.pid) as sampler:
            try:
                stdout, stderr = process.communicate(timeout=240)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        elapsed = time.monotonic() - started
        log = scp.output()

    assert process.returncode == 0, stderr
    assert stdout.startswith("Stored 1 of 1 files, 0 failed"), stdout
    assert size > 1024**3
    assert "Received Store Request" in log
    assert sampler.samples > 10
    assert sampler.peak < PEAK_RSS_LIMIT, (
        f"peak RSS {sampler.peak / 1e6:.0f} MB while sending {size / 1e9:.2f} GB "
        f"in {elapsed:.1f} s")
    # The original is untouched.
    assert huge.stat().st_size == size
