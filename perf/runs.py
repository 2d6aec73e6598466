"""Time one run of a sender or of a limit, check delivery, and summarise runs."""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perf.corpus import Corpus
from perf.measure import Measurement, run_measured
from perf.receiver import StoreScp, Variant, nodelay_env
from perf.tools import PROJECT_ROOT, Tool, ToolKind

logger = logging.getLogger(__name__)

RAW_COPY = "raw TCP copy"
FILE_READ = "file read"
NO_VARIANT = "-"


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Settings shared by every run of one benchmark."""

    logs_dir: Path
    output_root: Path
    timeout_s: float
    max_pdu: int
    # Sum PSS as well as RSS while polling (slower; for the memory mode).
    measure_pss: bool = False


@dataclass(slots=True)
class RunRecord:
    """One timed run and whether it delivered everything."""

    corpus: str
    variant: str
    tool: str
    kind: str
    repetition: int
    expected_files: int
    delivered_files: int | None
    total_bytes: int
    measurement: Measurement
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dictionary."""
        return {
            "corpus": self.corpus,
            "variant": self.variant,
            "tool": self.tool,
            "kind": self.kind,
            "repetition": self.repetition,
            "expected_files": self.expected_files,
            "delivered_files": self.delivered_files,
            "total_bytes": self.total_bytes,
            "flags": self.flags,
            **self.measurement.to_dict(),
        }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _exit_flags(measurement: Measurement, timeout_s: float) -> list[str]:
    if measurement.timed_out:
        return [f"TIMEOUT after {timeout_s:.0f} s"]
    if measurement.returncode:
        return [f"EXIT {measurement.returncode}"]
    return []


def run_sender(
    tool: Tool, corpus: Corpus, variant: Variant, repetition: int, settings: RunSettings
) -> RunRecord:
    """Send ``corpus`` with ``tool`` to a fresh storescp and check the count.

    The clock starts when the tool is launched, after storescp listens, and
    stops when the tool has exited, so it includes the tool's start-up.
    """
    stem = f"{corpus.name}-{variant.value}-{_slug(tool.name)}-r{repetition}"
    scp = StoreScp(
        variant,
        settings.output_root / "received",
        settings.logs_dir / f"{stem}.storescp.log",
        settings.max_pdu,
    )
    with scp:
        command = tool.build(scp.port, corpus.path, compressed=corpus.name == "j2k")
        measurement = run_measured(
            command,
            log_stem=settings.logs_dir / stem,
            timeout_s=settings.timeout_s,
            env=nodelay_env(),
            cwd=PROJECT_ROOT,
            pss=settings.measure_pss,
        )
        idle = scp.wait_idle()
        delivered = scp.delivered_count()

    flags = _exit_flags(measurement, settings.timeout_s)
    if delivered < corpus.file_count:
        flags.append(f"LOST {corpus.file_count - delivered}")
    elif delivered > corpus.file_count:
        flags.append(f"EXTRA {delivered - corpus.file_count}")
    if not idle:
        flags.append("RECEIVER BUSY after exit")
    record = RunRecord(
        corpus.name,
        variant.value,
        tool.name,
        tool.kind.value,
        repetition,
        corpus.file_count,
        delivered,
        corpus.total_bytes,
        measurement,
        flags,
    )
    _log_record(record)
    return record


def _read_count(path: str) -> int | None:
    lines = Path(path).read_text().split()
    return int(lines[-1]) if lines else None


def run_raw_copy(corpus: Corpus, repetition: int, settings: RunSettings) -> RunRecord:
    """Time ``perf.rawcopy send`` of the corpus's bytes to a counting sink."""
    stem = f"{corpus.name}-raw-r{repetition}"
    python = [sys.executable, "-m", "perf.rawcopy"]
    sink = subprocess.Popen(
        [*python, "sink"], stdout=subprocess.PIPE, cwd=PROJECT_ROOT, text=True
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        measurement = run_measured(
            [*python, "send", "127.0.0.1", str(port), str(corpus.path)],
            log_stem=settings.logs_dir / stem,
            timeout_s=settings.timeout_s,
            cwd=PROJECT_ROOT,
        )
        received_text, _ = sink.communicate(timeout=30)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    received = int(received_text.split()[-1]) if received_text.strip() else 0

    flags = _exit_flags(measurement, settings.timeout_s)
    if received != corpus.total_bytes:
        flags.append(f"BYTES {received} of {corpus.total_bytes}")
    delivered = corpus.file_count if received == corpus.total_bytes else None
    record = RunRecord(
        corpus.name,
        NO_VARIANT,
        RAW_COPY,
        ToolKind.LIMIT.value,
        repetition,
        corpus.file_count,
        delivered,
        corpus.total_bytes,
        measurement,
        flags,
    )
    _log_record(record)
    return record


def run_file_read(corpus: Corpus, repetition: int, settings: RunSettings) -> RunRecord:
    """Time ``perf.rawcopy read`` of every file of the corpus."""
    stem = f"{corpus.name}-read-r{repetition}"
    measurement = run_measured(
        [sys.executable, "-m", "perf.rawcopy", "read", str(corpus.path)],
        log_stem=settings.logs_dir / stem,
        timeout_s=settings.timeout_s,
        cwd=PROJECT_ROOT,
    )
    read_bytes = _read_count(measurement.stdout_path)
    flags = _exit_flags(measurement, settings.timeout_s)
    if read_bytes != corpus.total_bytes:
        flags.append(f"BYTES {read_bytes} of {corpus.total_bytes}")
    record = RunRecord(
        corpus.name,
        NO_VARIANT,
        FILE_READ,
        ToolKind.LIMIT.value,
        repetition,
        corpus.file_count,
        corpus.file_count if read_bytes == corpus.total_bytes else None,
        corpus.total_bytes,
        measurement,
        flags,
    )
    _log_record(record)
    return record


def _log_record(record: RunRecord) -> None:
    m = record.measurement
    logger.info(
        "%s %s %-22s rep %d: %.2f s, cpu %.2f s, rss %.0f MB, delivered %s/%d %s",
        record.corpus,
        record.variant,
        record.tool,
        record.repetition,
        m.wall_s,
        m.cpu_s,
        m.peak_rss_bytes / 1e6,
        record.delivered_files,
        record.expected_files,
        " ".join(record.flags),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """The medians of every repetition of one tool on one corpus and variant."""

    corpus: str
    variant: str
    tool: str
    kind: str
    runs: int
    files: int
    total_bytes: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: float
    flags: tuple[str, ...]

    @property
    def files_per_s(self) -> float:
        """Files per second at the median wall time."""
        return self.files / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        """Megabytes (10**6 bytes) of file content per second."""
        return self.total_bytes / 1e6 / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the fields and rates as a JSON-ready dictionary."""
        return {
            "corpus": self.corpus,
            "variant": self.variant,
            "tool": self.tool,
            "kind": self.kind,
            "runs": self.runs,
            "files": self.files,
            "total_bytes": self.total_bytes,
            "median_wall_s": self.wall_s,
            "median_cpu_s": self.cpu_s,
            "median_peak_rss_bytes": self.peak_rss_bytes,
            "files_per_s": self.files_per_s,
            "mb_per_s": self.mb_per_s,
            "flags": list(self.flags),
        }


def summarize(records: list[RunRecord]) -> list[Summary]:
    """Group the records by corpus, variant and tool and take the medians.

    Flagged runs stay in the medians (a timed-out run counts with its timeout
    as wall time); their flags, with the repetition, go into ``flags``.
    """
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in records:
        key = (record.corpus, record.variant, record.tool)
        groups.setdefault(key, []).append(record)
    summaries = []
    for (corpus, variant, tool), runs in groups.items():
        flags = tuple(
            f"{flag} (rep {run.repetition})" for run in runs for flag in run.flags
        )
        summaries.append(
            Summary(
                corpus=corpus,
                variant=variant,
                tool=tool,
                kind=runs[0].kind,
                runs=len(runs),
                files=runs[0].expected_files,
                total_bytes=runs[0].total_bytes,
                wall_s=statistics.median(r.measurement.wall_s for r in runs),
                cpu_s=statistics.median(r.measurement.cpu_s for r in runs),
                peak_rss_bytes=statistics.median(
                    r.measurement.peak_rss_bytes for r in runs
                ),
                flags=flags,
            )
        )
    return summaries
