"""Per-file reports: records on the result, JSON Lines and CSV files, the CLI table."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from e2e_support import PYDICOM_TEST_FILES, instance_uid, load_receivers, read
from engine import EventType, StoreScu
from engine.reports import REPORT_COLUMNS, FileRecord, Outcome, Report

pytestmark = pytest.mark.dcmtk
receivers = load_receivers()

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
MR = PYDICOM_TEST_FILES / "MR_small.dcm"
SC_RGB = PYDICOM_TEST_FILES / "SC_rgb_small_odd.dcm"
JPEG = PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm"


def by_name(records: tuple[FileRecord, ...]) -> dict[str, FileRecord]:
    return {Path(record.path).name: record for record in records}


def test_records_of_stored_files(storescp: Any, tmp_path: Path) -> None:
    report_path = tmp_path / "report.jsonl"
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1,
                   report=report_path)
    scu.add_file(CT)
    scu.add_file(MR)

    result = scu.send()

    assert result.successful == 2
    records = by_name(result.records)
    assert set(records) == {"CT_small.dcm", "MR_small.dcm"}
    ct = records["CT_small.dcm"]
    dataset = read(CT)
    assert ct.outcome is Outcome.STORED
    assert ct.path == str(CT)
    assert ct.sop_class_uid == dataset.SOPClassUID
    assert ct.sop_instance_uid == instance_uid(dataset)
    assert ct.transfer_syntax_in == ExplicitVRLittleEndian
    assert ct.transfer_syntax_out == ExplicitVRLittleEndian
    assert ct.file_bytes == CT.stat().st_size
    assert ct.bytes_sent is not None and 0 < ct.bytes_sent < ct.file_bytes
    assert ct.status == 0x0000
    assert ct.status_category == "Success"
    assert ct.attempts == 1
    assert ct.duration_seconds is not None and ct.duration_seconds > 0
    assert ct.error is None

    lines = [json.loads(line) for line in report_path.read_text().splitlines()]
    assert len(lines) == 2
    assert all(set(line) == set(REPORT_COLUMNS) for line in lines)
    written = {Path(line["path"]).name: line for line in lines}
    assert written["CT_small.dcm"]["status"] == "0x0000"
    assert written["CT_small.dcm"]["outcome"] == "stored"
    assert written["CT_small.dcm"]["bytes_sent"] == ct.bytes_sent


def test_records_of_transcoded_files(storescp: Any, tmp_path: Path) -> None:
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1,
                   transfer_syntax="JPEG2000Lossless", report=tmp_path / "r.jsonl")
    scu.add_file(CT)
    scu.add_file(JPEG)

    result = scu.send()

    records = by_name(result.records)
    assert len(result.records) == 2
    assert records["CT_small.dcm"].transfer_syntax_in == ExplicitVRLittleEndian
    assert records["CT_small.dcm"].transfer_syntax_out == JPEG2000Lossless
    jpeg = records["SC_rgb_jpeg_dcmtk.dcm"]
    assert jpeg.outcome is Outcome.STORED
    assert jpeg.transfer_syntax_in == JPEGBaseline8Bit
    assert jpeg.transfer_syntax_out == JPEG2000Lossless
    assert jpeg.bytes_sent is not None and jpeg.bytes_sent > 0


def test_records_of_failures_and_warnings(tmp_path: Path) -> None:
    """Warning, retried and failed statuses, and a file that is not DICOM."""
    warned, refused, busy = (instance_uid(read(path)) for path in (MR, SC_RGB, CT))

    def handle_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        return {warned: 0xB000, refused: 0xC123, busy: 0xA701}.get(uid, 0x0000)

    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM at all")
    report_path = tmp_path / "report.csv"
    with receivers.start_pynetdicom_scp(handle_store) as scp:
        scu = StoreScu(f"127.0.0.1:{scp.port}", transcode_workers=1, retries=1,
                       report=report_path)
        for path in (CT, MR, SC_RGB, broken):
            scu.add_file(path)
        result = scu.send()

    assert result.successful == 1
    assert result.failed == 3
    records = by_name(result.records)

    mr = records["MR_small.dcm"]
    assert mr.outcome is Outcome.STORED
    assert (mr.status, mr.status_category) == (0xB000, "Warning")
    assert mr.error is not None and "Coercion of data elements" in mr.error

    sc = records["SC_rgb_small_odd.dcm"]
    assert sc.outcome is Outcome.FAILED
    assert (sc.status, sc.status_category) == (0xC123, "Failure")
    assert sc.attempts == 1
    assert sc.transfer_syntax_out is None
    assert sc.error is not None and "0xC123" in sc.error

    ct = records["CT_small.dcm"]
    assert ct.outcome is Outcome.FAILED
    assert ct.status == 0xA701
    assert ct.attempts == 2
    assert ct.duration_seconds is not None and ct.duration_seconds > 0

    not_dicom = records["broken.dcm"]
    assert not_dicom.outcome is Outcome.FAILED
    assert not_dicom.status is None
    assert not_dicom.status_category is None
    assert not_dicom.attempts == 0
    assert not_dicom.sop_instance_uid is None
    assert not_dicom.error is not None and "broken.dcm" in not_dicom.error

    with report_path.open(newline="") as report_file:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(report_file)}
    assert set(rows) == set(records)
    assert rows["SC_rgb_small_odd.dcm"]["status"] == "0xC123"
    assert rows["SC_rgb_small_odd.dcm"]["status_category"] == "Failure"
    assert rows["CT_small.dcm"]["attempts"] == "2"
    assert rows["broken.dcm"]["status"] == ""
    assert rows["MR_small.dcm"]["outcome"] == "stored"


def test_report_written_as_files_finish(storescp: Any, tmp_path: Path) -> None:
    """Each record is on disk by the time the file's callback runs."""
    report_path = tmp_path / "report.jsonl"
    folder = tmp_path / "input"
    folder.mkdir()
    for index in range(6):
        (folder / f"{index}.dcm").write_bytes(CT.read_bytes() if index % 2
                                              else MR.read_bytes())
    lines_seen: list[int] = []

    def on_file_sent(err: Exception | None, event: Any) -> None:
        assert event.type is EventType.FILE_SENT
        lines_seen.append(len(report_path.read_text().splitlines()))

    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1,
                   report=report_path)
    scu.add_directory(folder)
    result = scu.send(on_file_sent=on_file_sent)

    assert result.successful == 6
    assert lines_seen == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["report.txt", "report", "report.json"])
def test_report_extension_invalid(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.jsonl \(JSON Lines\) or "
                                         r"\.csv"):
        StoreScu("127.0.0.1:11112", report=tmp_path / name)


def test_report_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Invalid report '.*missing/r\.csv'"):
        Report(tmp_path / "missing" / "r.csv")


def test_cli_report_and_summary_table(storescp: Any, tmp_path: Path) -> None:
    report_path = tmp_path / "out.csv"
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM")
    completed = subprocess.run(
        [sys.executable, "-m", "engine.cli", "send", f"127.0.0.1:{storescp.port}",
         str(CT), str(MR), str(broken), "--report", str(report_path), "-w", "1"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "160"},
    )

    assert completed.returncode == 1, completed.stderr
    assert "Outcome per file" in completed.stdout
    table_rows = [line for line in completed.stdout.splitlines()
                  if "stored" in line or "failed" in line]
    assert any("0x0000 Success" in line and " 2 " in line for line in table_rows)
    assert any("not sent" in line and " 1 " in line for line in table_rows)
    with report_path.open(newline="") as report_file:
        rows = list(csv.DictReader(report_file))
    assert sorted(row["outcome"] for row in rows) == ["failed", "stored", "stored"]


def test_summary_table_counts() -> None:
    from rich.console import Console

    from engine.reports import summary_table

    def record(path: str, outcome: Outcome, status: int | None,
               error: str | None = None) -> FileRecord:
        return FileRecord(path, outcome, "1.2", f"1.2.{len(path)}", RLELossless,
                          RLELossless, 1_000_000, 900, status, None, 1, 0.5, error)

    records = [
        record("a", Outcome.STORED, 0),
        record("b", Outcome.STORED, 0),
        record("c", Outcome.FAILED, 0xA900, "c: does not match"),
        record("a", Outcome.COMMITTED, 0),
        record("b", Outcome.NOT_COMMITTED, 0, "b: no such object instance"),
    ]
    console = Console(width=160, record=True)
    console.print(summary_table(records))
    text = console.export_text()

    assert "committed" in text
    assert "not committed" in text
    assert "b: no such object instance" in text
    assert "c: does not match" in text
    # Each file counts once, under its last record.
    committed_row = next(line for line in text.splitlines()
                         if line.lstrip("│ ").startswith("committed"))
    assert " 1 " in committed_row


def test_no_records_kept_without_report(storescp: Any) -> None:
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1)
    scu.add_file(CT)

    result = scu.send()

    assert result.successful == 1
    assert result.records == ()


def test_report_appends_on_rerun(storescp: Any, tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    for _ in range(2):
        scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1,
                       report=report)
        scu.add_file(CT)
        scu.send()

    lines = report.read_text().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("path,")
