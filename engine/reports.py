"""Per-file reports: one ``FileRecord`` per file, kept in memory and written out.

The coordinator passes every file's outcome to a :class:`Report` as soon as
it is known. The report turns it into a :class:`FileRecord`, keeps it for
``SendResult.records`` and, when given a path, appends it to a JSON Lines
(``.jsonl``) or CSV (``.csv``) file and flushes the file. A crash of the
caller's process therefore leaves every record written so far. A power
failure can still lose what the operating system had not yet written.

With storage commitment, each stored file gets a second record once the
receiver's report arrives, with the outcome ``committed`` or ``not
committed``. The last record of a file is its final outcome.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from engine.events import FileFailed, FileStored
from engine.statuses import describe_status

if TYPE_CHECKING:
    from rich.table import Table

    from engine.sources import Source

logger = logging.getLogger(__name__)

REPORT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


class Outcome(enum.Enum):
    """The outcome of a file. A commitment outcome follows a ``STORED`` record."""

    STORED = "stored"
    FAILED = "failed"
    COMMITTED = "committed"
    NOT_COMMITTED = "not committed"


@dataclass(frozen=True, slots=True)
class FileRecord:
    """The outcome of one file, as written to the report.

    ``path`` is the name events use: the path as given, an ``s3://`` URL, or
    the name of a file added from memory. ``transfer_syntax_in`` is the
    file's own syntax and ``transfer_syntax_out`` the one used on the wire
    (None when nothing was sent). ``file_bytes`` is the file's size and
    ``bytes_sent`` the size of the data set sent in the last attempt.
    ``status`` is the (0000,0900) Status of the C-STORE response, None when
    the receiver never responded; ``status_category`` is its PS3.7 category.
    ``attempts`` counts C-STORE attempts (0 when the file failed before it
    reached a sender). ``error`` is the reason for a failure, or the warning
    of a file stored with a warning status.
    """

    path: str
    outcome: Outcome
    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_in: str | None
    transfer_syntax_out: str | None
    file_bytes: int | None
    bytes_sent: int | None
    status: int | None
    status_category: str | None
    attempts: int
    duration_seconds: float | None
    error: str | None

    def to_row(self) -> dict[str, Any]:
        """Return the record as report columns: plain values, status in hex."""
        row = {field.name: getattr(self, field.name) for field in fields(self)}
        row["outcome"] = self.outcome.value
        if self.status is not None:
            row["status"] = f"0x{self.status:04X}"
        if self.duration_seconds is not None:
            row["duration_seconds"] = round(self.duration_seconds, 6)
        return row


REPORT_COLUMNS = tuple(field.name for field in fields(FileRecord))


def record_from_outcome(source: Source, outcome: FileStored | FileFailed) -> FileRecord:
    """Build the record of one file from its source and its outcome event."""
    header = source.header
    syntax_in = header.transfer_syntax if header is not None else None
    file_bytes = source.size if header is not None else None

    if isinstance(outcome, FileStored):
        return FileRecord(
            path=source.name,
            outcome=Outcome.STORED,
            sop_class_uid=outcome.sop_class_uid,
            sop_instance_uid=outcome.sop_instance_uid,
            transfer_syntax_in=syntax_in,
            transfer_syntax_out=outcome.transfer_syntax,
            file_bytes=file_bytes,
            bytes_sent=outcome.bytes_sent,
            status=outcome.status,
            status_category=describe_status(outcome.status)[0].value,
            attempts=outcome.attempts,
            duration_seconds=outcome.duration_seconds,
            error=outcome.warning,
        )

    return FileRecord(
        path=source.name,
        outcome=Outcome.FAILED,
        sop_class_uid=outcome.sop_class_uid
        or (header.sop_class_uid if header is not None else None),
        sop_instance_uid=outcome.sop_instance_uid
        or (header.sop_instance_uid if header is not None else None),
        transfer_syntax_in=outcome.file_transfer_syntax or syntax_in,
        transfer_syntax_out=None,
        file_bytes=file_bytes,
        bytes_sent=None,
        status=outcome.status,
        status_category=(describe_status(outcome.status)[0].value
                         if outcome.status is not None else None),
        attempts=outcome.attempts,
        duration_seconds=outcome.duration_seconds,
        error=outcome.error,
    )


def report_format(path: str | os.PathLike[str]) -> str:
    """Return ``"jsonl"`` or ``"csv"`` for a report path, by its extension.

    Raises
    ------
    ValueError
        If the extension is neither ``.jsonl`` nor ``.csv``.
    """
    extension = os.path.splitext(os.fspath(path))[1].lower()
    try:
        return REPORT_FORMATS[extension]
    except KeyError:
        raise ValueError(
            f"Invalid report {os.fspath(path)!r}: the file name must end in "
            ".jsonl (JSON Lines) or .csv"
        ) from None


class Report:
    """The records of one ``send``, and the report file they are written to.

    Parameters
    ----------
    path : str or path-like or None
        The report file, ``.jsonl`` or ``.csv``. Records are appended to an
        existing file. None keeps the records in memory only.
    keep_records : bool
        Keep every record in ``records`` as well.

    Raises
    ------
    ValueError
        If the extension is not ``.jsonl`` or ``.csv``, or the file cannot
        be created; the message names the path.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 keep_records: bool = True) -> None:
        self.path = os.fspath(path) if path is not None else None
        # Each kept record costs about 0.45 kB, so a batch that asked for no
        # report and no commitment keeps none.
        self.keep_records = keep_records
        self.records: list[FileRecord] = []
        self._file: io.TextIOWrapper | None = None
        self._csv: Any = None
        if self.path is None:
            return

        kind = report_format(self.path)
        try:
            # Appended, so a rerun (with a journal, say) keeps earlier records.
            self._file = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise ValueError(
                f"Invalid report '{self.path}': {exc.strerror or exc}; give a path "
                "in a folder that exists and is writable"
            ) from exc
        if kind == "csv":
            self._csv = csv.DictWriter(self._file, fieldnames=REPORT_COLUMNS)
            if self._file.tell() == 0:
                self._csv.writeheader()
                self._file.flush()

    def add(self, source: Source, outcome: FileStored | FileFailed) -> FileRecord:
        """Record a file's outcome, write it to the report file and flush."""
        record = record_from_outcome(source, outcome)
        self.write(record)
        return record

    def write(self, record: FileRecord) -> None:
        """Keep ``record`` and append it to the report file, if there is one."""
        if self.keep_records:
            self.records.append(record)
        if self._file is None:
            return
        try:
            if self._csv is not None:
                self._csv.writerow(record.to_row())
            else:
                self._file.write(json.dumps(record.to_row()) + "\n")
            self._file.flush()
        except OSError as exc:
            # The transfer goes on: the records stay in SendResult.records.
            logger.error("Unable to write to the report '%s': %s; no more records "
                         "are written to it", self.path, exc.strerror or exc)
            self._close_file()

    def close(self) -> None:
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                logger.error("Unable to close the report '%s': %s", self.path,
                             exc.strerror or exc)
            self._file = None
            self._csv = None

    def __enter__(self) -> Report:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def commitment_records(
    stored: Sequence[FileRecord],
    committed: Iterable[tuple[str, str]],
    failures: dict[tuple[str, str], str],
) -> list[FileRecord]:
    """Return a commitment record for each stored record, in the same order.

    ``committed`` contains the (SOP Class UID, SOP Instance UID) pairs the
    receiver committed, ``failures`` maps the others to the reason.
    """
    committed_pairs = set(committed)
    records = []
    for record in stored:
        pair = (record.sop_class_uid or "", record.sop_instance_uid or "")
        if pair in committed_pairs:
            records.append(replace(record, outcome=Outcome.COMMITTED, error=None))
        else:
            reason = failures.get(pair, "the receiver did not report on it")
            records.append(replace(
                record, outcome=Outcome.NOT_COMMITTED,
                error=f"Stored '{record.path}' but {reason}",
            ))
    return records


def final_records(records: Iterable[FileRecord]) -> list[FileRecord]:
    """Return the last record of each file, in the order files first appear."""
    last: dict[tuple[str, str | None], FileRecord] = {}
    for record in records:
        # Assigning to a key already present keeps its first position.
        last[(record.path, record.sop_instance_uid)] = record
    return list(last.values())


def format_size(size: int) -> str:
    """Return ``size`` bytes in kB, MB or GB (powers of 1000), one decimal."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def summary_table(records: Sequence[FileRecord]) -> Table:
    """Build a rich table of the final outcomes, one row per outcome and status.

    Each row gives the number of files, their total size and the sum of
    their send times, from the first C-STORE attempt to the response, so
    parallel associations overlap. Rows of failures show the first reason.
    """
    from rich.table import Table

    groups: Counter[tuple[str, str]] = Counter()
    sizes: Counter[tuple[str, str]] = Counter()
    seconds: dict[tuple[str, str], float] = {}
    examples: dict[tuple[str, str], str] = {}
    for record in final_records(records):
        if record.status is not None:
            status = f"0x{record.status:04X} {describe_status(record.status)[1]}"
        elif not record.attempts:
            status = "not sent"
        else:
            status = "no response"
        key = (record.outcome.value, status)
        groups[key] += 1
        sizes[key] += record.file_bytes or 0
        seconds[key] = seconds.get(key, 0.0) + (record.duration_seconds or 0.0)
        if record.error and key not in examples and record.outcome in (
                Outcome.FAILED, Outcome.NOT_COMMITTED):
            examples[key] = record.error

    table = Table(title="Outcome per file")
    table.add_column("outcome")
    table.add_column("status")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    table.add_column("send time (s)", justify="right")
    table.add_column("first reason", overflow="fold")
    for key, count in sorted(groups.items(), key=lambda item: (item[0][0], -item[1])):
        table.add_row(key[0], key[1], str(count), format_size(sizes[key]),
                      f"{seconds[key]:.2f}", examples.get(key, ""))
    return table
