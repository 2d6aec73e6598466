"""The ``dicomsend`` command line, run as a subprocess: exit codes and output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from e2e_support import PYDICOM_TEST_FILES, load_receivers, received_files

pytestmark = pytest.mark.dcmtk
receivers = load_receivers()

SUMMARY = re.compile(
    r"^Stored (\d+) of (\d+) files, (\d+) failed, (\d+) with warnings"
    r"(, (\d+) skipped \(not DICOM or DICOMDIR\))? in [\d.]+ s \(\d+ files/s\)$",
    re.MULTILINE,
)


def dicomsend(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI through this interpreter, with a time limit."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_send_all_stored_exits_0(storescp: Any) -> None:
    result = dicomsend("send", f"127.0.0.1:{storescp.port}",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"),
                       str(PYDICOM_TEST_FILES / "MR_small.dcm"),
                       "--calling-ae", "CLI-SCU", "--called-ae", "STORESCP",
                       "--max-pdu", "32768", "-j", "2", "-w", "1",
                       "--transfer-syntax", "JPEGLSLossless")
    assert result.returncode == 0, result.stderr
    match = SUMMARY.search(result.stdout)
    assert match is not None, result.stdout
    assert match.group(1, 2, 3, 4) == ("2", "2", "0", "0")
    assert len(received_files(storescp.out_dir)) == 2


def test_send_some_failed_exits_1(storescp: Any, tmp_path: Path) -> None:
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "a.dcm").write_bytes((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
    (folder / "notes.txt").write_text("not DICOM")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"garbage, not DICOM")
    result = dicomsend("send", f"127.0.0.1:{storescp.port}", str(folder), str(broken))
    assert result.returncode == 1
    match = SUMMARY.search(result.stdout)
    assert match is not None, result.stdout
    assert match.group(1, 2, 3, 6) == ("1", "2", "1", "1")
    assert str(broken) in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--max-pdu", "100"], "Invalid --max-pdu 100"),
    (["--called-ae", "A" * 17], "Invalid --called-ae"),
    (["-j", "0"], "Invalid --concurrency 0"),
    (["--transfer-syntax", "Nope"], "Nope"),
])
def test_send_usage_error_exits_2(args: list[str], message: str) -> None:
    result = dicomsend("send", "127.0.0.1:11112",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"), *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_send_bad_address_exits_2() -> None:
    result = dicomsend("send", "127.0.0.1:99999",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"))
    assert result.returncode == 2
    assert "Invalid addr '127.0.0.1:99999'" in result.stderr


def test_send_no_receiver_exits_3() -> None:
    port = receivers.free_port()
    result = dicomsend("send", f"127.0.0.1:{port}",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"))
    assert result.returncode == 3
    assert "could not establish association" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


def test_send_rejected_exits_3(tmp_path: Path) -> None:
    with receivers.start_storescp(tmp_path, "--refuse") as scp:
        result = dicomsend("send", f"127.0.0.1:{scp.port}",
                           str(PYDICOM_TEST_FILES / "CT_small.dcm"))
    assert result.returncode == 3
    assert "rejected" in result.stderr


def test_send_verbose_logs_protocol(storescp: Any) -> None:
    result = dicomsend("send", "-v", f"127.0.0.1:{storescp.port}",
                       str(PYDICOM_TEST_FILES / "CT_small.dcm"))
    assert result.returncode == 0
    assert "INFO" in result.stderr


def test_echo_storescp(storescp: Any) -> None:
    result = dicomsend("echo", f"127.0.0.1:{storescp.port}")
    assert result.returncode == 0, result.stderr
    assert f"C-ECHO to 127.0.0.1:{storescp.port}" in result.stdout
    assert "(0x0000)" in result.stdout


def test_echo_no_receiver_exits_3() -> None:
    port = receivers.free_port()
    result = dicomsend("echo", f"127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 3
    assert "could not establish association" in result.stderr


def test_receive_stores_what_send_sends(tmp_path: Path) -> None:
    """``dicomsend receive`` on a free port stores what ``dicomsend send`` sends."""
    port = receivers.free_port()
    out_dir = tmp_path / "out"
    server = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "receive", "--port", str(port),
         "--ae-title", "RECEIVER", "--out", str(out_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(100):
            if receivers._port_accepts("127.0.0.1", port):
                break
            if server.poll() is not None:
                break
            time.sleep(0.1)
        result = dicomsend("send", f"127.0.0.1:{port}", "--called-ae", "RECEIVER",
                           str(PYDICOM_TEST_FILES / "CT_small.dcm"))
        assert result.returncode == 0, result.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert len(received_files(out_dir)) == 1
