"""Benchmark dicomsend against DCMTK and pynetdicom on 127.0.0.1.

Run ``python -m perf.bench --help`` for the options and read
``perf/README.md`` for what each figure means. Three modes:

- default: every sender on every corpus against storescp variants A and B,
  plus the raw TCP copy and file read limits; writes ``latest.md``,
  ``latest.json`` and ``latest.png`` to the results folder;
- ``--soak N``: N runs of dicomsend ``-j 4`` against ``storescp --fork``,
  counting stalls and lost files; writes ``soak-latest.md`` and ``.json``;
- ``--memory-scaling``: peak RSS of each sender for 1,000 and 10,000 tiny
  files; writes ``memory-latest.md`` and ``.json``;
- ``--transcode``: ``dicomsend send -t JPEG2000Lossless`` with 1 and with 2
  transcode workers, against the codec called directly; writes
  ``transcode-latest.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from perf.corpus import Corpus, ensure_corpus
from perf.machine import describe_machine, describe_software
from perf.nodelay import check_nodelay
from perf.receiver import Variant
from perf.report import write_chart, write_json, write_markdown
from perf.runs import (
    RunRecord,
    RunSettings,
    run_file_read,
    run_raw_copy,
    run_sender,
    summarize,
)
from perf.tools import (
    PROJECT_ROOT,
    Tool,
    ToolKind,
    baseline_tools,
    dicomsend_tools,
    find_dicomsend,
    peer_tools,
)

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "dicomsend-bench"
DEFAULT_RESULTS = PROJECT_ROOT / "perf" / "results"
FULL_COUNTS = {"ct": 1000, "small": 2000, "j2k": 20}
QUICK_COUNTS = {"ct": 100, "small": 200, "j2k": 5}


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m perf.bench",
        description="Benchmark dicomsend against DCMTK and pynetdicom on 127.0.0.1.",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="folder of the generated corpora (default: %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                        help="folder for the reports and logs (default: %(default)s)")
    parser.add_argument("--output-root", type=Path, default=Path("/dev/shm"),
                        help="tmpfs folder under which storescp writes in variant A "
                        "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="small smoke run: 100 CT, 200 small and 5 JPEG 2000 "
                        "files, 1 repetition unless --reps is given")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions per cell; the report shows medians "
                        "(default 3)")
    parser.add_argument("--ct", type=int, help="number of CT files (default 1000)")
    parser.add_argument("--small", type=int,
                        help="number of small files (default 2000)")
    parser.add_argument("--j2k", type=int,
                        help="number of JPEG 2000 files (default 20)")
    parser.add_argument("--corpora", default="ct,small,j2k",
                        help="comma-separated corpora to run (default: %(default)s)")
    parser.add_argument("--variants", default="A,B",
                        help="receiver variants: A stores to tmpfs, B discards "
                        "(default: %(default)s)")
    parser.add_argument("--tools", default="",
                        help="comma-separated tool names to run, for example "
                        "'storescu,dicomsend -j4 -w2' (default: all)")
    parser.add_argument("--jobs", type=_int_list, default=[1, 2, 4],
                        help="dicomsend -j values (default: 1,2,4)")
    parser.add_argument("--workers", type=_int_list, default=[1, 2],
                        help="dicomsend -w values (default: 1,2)")
    parser.add_argument("--baseline-root", type=Path, default=None,
                        help="another copy of the project whose dicomsend is "
                        "measured as well, as rows 'baseline -jJ -wW' (for "
                        "before/after comparisons in one run)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds after which a run counts as stalled and is "
                        "killed (default: %(default)s)")
    parser.add_argument("--max-pdu", type=int, default=16384,
                        help="maximum PDU size that storescp accepts, 4096 to 131072 "
                        "(default: %(default)s, storescp's own default)")
    parser.add_argument("--no-limits", action="store_true",
                        help="skip the raw TCP copy and file read limits")
    parser.add_argument("--skip-nodelay-check", action="store_true",
                        help="do not trace setsockopt to check TCP_NODELAY")
    parser.add_argument("--soak", type=int, metavar="N",
                        help="run dicomsend -j 4 N times against storescp --fork and "
                        "report stalls and lost files")
    parser.add_argument("--soak-timeout", type=float, default=120.0,
                        help="timeout of each soak run in seconds "
                        "(default: %(default)s)")
    parser.add_argument("--memory-scaling", action="store_true",
                        help="measure peak RSS of each sender for 1,000 and 10,000 "
                        "tiny files")
    parser.add_argument("--transcode", action="store_true",
                        help="time dicomsend send -t TARGET with -w 1 and -w 2 "
                        "against the codec alone on the CT corpus")
    parser.add_argument("--transcode-target", default="JPEG2000Lossless",
                        help="target syntax of --transcode (default: %(default)s)")
    parser.add_argument("--transcode-files", type=int, default=300,
                        help="CT files that --transcode sends (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every run")
    args = parser.parse_args(argv)

    counts = dict(QUICK_COUNTS if args.quick else FULL_COUNTS)
    for kind in counts:
        if getattr(args, kind) is not None:
            counts[kind] = getattr(args, kind)
    args.counts = counts
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        parser.error(f"invalid --reps {args.reps}; use 1 or more")
    if not 4096 <= args.max_pdu <= 131072:
        parser.error(
            f"invalid --max-pdu {args.max_pdu}; storescp accepts 4096 to 131072"
        )
    args.corpus_list = [c.strip() for c in args.corpora.split(",") if c.strip()]
    unknown = set(args.corpus_list) - set(FULL_COUNTS)
    if unknown:
        parser.error(f"unknown corpus {sorted(unknown)}; use {sorted(FULL_COUNTS)}")
    try:
        args.variant_list = [
            Variant(v.strip().upper()) for v in args.variants.split(",")
        ]
    except ValueError:
        parser.error(f"invalid --variants {args.variants!r}; use A, B or A,B")
    return args


def _settings(
    args: argparse.Namespace, logs_dir: Path, timeout_s: float
) -> RunSettings:
    output_root = args.output_root / f"dicomsend-bench-{os.getpid()}"
    return RunSettings(logs_dir, output_root, timeout_s, args.max_pdu)


def _select_tools(args: argparse.Namespace) -> list[Tool]:
    tools = peer_tools() + dicomsend_tools(args.jobs, args.workers)
    if args.baseline_root is not None:
        tools += baseline_tools(args.baseline_root.resolve(), args.jobs, args.workers)
    if args.tools:
        requested = {name.strip() for name in args.tools.split(",")}
        tools = [t for t in tools if t.name in requested]
    return tools


def _common_meta(
    args: argparse.Namespace, started: datetime.datetime
) -> dict[str, Any]:
    return {
        "started": started.isoformat(timespec="seconds"),
        "command": "python -m perf.bench " + shlex.join(sys.argv[1:]),
        "machine": describe_machine(),
        "software": describe_software(),
        "max_pdu": args.max_pdu,
    }


def _finish_meta(meta: dict[str, Any], start: float) -> None:
    meta["duration_s"] = time.perf_counter() - start
    meta["load_average_end"] = list(os.getloadavg())


def _runs_json(meta: dict[str, Any], records: list[RunRecord]) -> str:
    document = {"meta": meta, "runs": [r.to_dict() for r in records]}
    return json.dumps(document, indent=2) + "\n"


def run_benchmark(args: argparse.Namespace) -> int:
    """Run the main benchmark and write latest.md, latest.json and latest.png."""
    start = time.perf_counter()
    meta = _common_meta(args, datetime.datetime.now())
    results_dir: Path = args.results_dir
    logs_dir = results_dir / "logs"
    if logs_dir.exists():
        shutil.rmtree(logs_dir)
    settings = _settings(args, logs_dir, args.timeout)

    corpora: list[Corpus] = [
        ensure_corpus(args.cache_dir, kind, args.counts[kind])
        for kind in args.corpus_list
    ]
    tools = _select_tools(args)
    available = [t for t in tools if t.available]

    nodelay: dict[str, str] = {}
    if not args.skip_nodelay_check:
        probe = ensure_corpus(args.cache_dir, "tiny", 2)
        nodelay = check_nodelay(
            available, probe.path, logs_dir / "nodelay", args.max_pdu
        )

    records: list[RunRecord] = []
    try:
        for corpus in corpora:
            # Repetitions are the outer loop, so a slow drift of the machine's
            # load spreads over every tool instead of hitting one.
            for rep in range(1, args.reps + 1):
                for variant in args.variant_list:
                    for tool in available:
                        records.append(run_sender(tool, corpus, variant, rep, settings))
                if not args.no_limits:
                    records.append(run_raw_copy(corpus, rep, settings))
                    records.append(run_file_read(corpus, rep, settings))
    finally:
        shutil.rmtree(settings.output_root, ignore_errors=True)

    meta.update(
        {
            "repetitions": args.reps,
            "timeout_s": args.timeout,
            "receiver": f"/usr/bin/storescp --fork -v +xa -dhl -pdu {args.max_pdu}",
            "variants": {v.value: v.description for v in args.variant_list},
            "nodelay": nodelay or {"(not checked)": "--skip-nodelay-check"},
            "unavailable": {
                t.name: t.unavailable_reason for t in tools if not t.available
            },
            "corpora": [
                {"name": c.name, "path": str(c.path), "file_count": c.file_count,
                 "total_bytes": c.total_bytes}
                for c in corpora
            ],
        }
    )
    _finish_meta(meta, start)
    summaries = summarize(records)
    results_dir.mkdir(parents=True, exist_ok=True)
    runs = [r.to_dict() for r in records]
    write_json(results_dir / "latest.json", meta, summaries, runs)
    write_markdown(results_dir / "latest.md", meta, summaries)
    write_chart(results_dir / "latest.png", meta, summaries)
    print((results_dir / "latest.md").read_text())
    return 1 if any(r.flags for r in records) else 0


def _dicomsend_or_report(jobs: int, workers: int) -> Tool | None:
    tool = dicomsend_tools([jobs], [workers])[0]
    if not tool.available:
        print(f"dicomsend is not available: {tool.unavailable_reason}", file=sys.stderr)
        return None
    return tool


def run_soak(args: argparse.Namespace) -> int:
    """Send the small corpus ``args.soak`` times with dicomsend -j 4 -w 2."""
    tool = _dicomsend_or_report(4, 2)
    if tool is None:
        return 2
    start = time.perf_counter()
    meta = _common_meta(args, datetime.datetime.now())
    logs_dir = args.results_dir / "logs-soak"
    if logs_dir.exists():
        shutil.rmtree(logs_dir)
    settings = _settings(args, logs_dir, args.soak_timeout)
    corpus = ensure_corpus(args.cache_dir, "small", args.counts["small"])

    records = []
    try:
        for i in range(1, args.soak + 1):
            records.append(run_sender(tool, corpus, Variant.STORE, i, settings))
    finally:
        shutil.rmtree(settings.output_root, ignore_errors=True)
    _finish_meta(meta, start)

    stalls = [r for r in records if r.measurement.timed_out]
    lossy = [r for r in records if (r.delivered_files or 0) < r.expected_files]
    failed = [r for r in records if r.flags]
    walls = sorted(r.measurement.wall_s for r in records)
    lines = [
        "# dicomsend soak results",
        "",
        f"Measured {meta['started']} with `{meta['command']}`.",
        f"`{tool.name}` sent corpus `small` ({corpus.file_count} files) "
        f"{len(records)} times to `storescp --fork` (variant A, tmpfs); "
        f"timeout per run {args.soak_timeout:.0f} s.",
        "",
        f"- stalled (timed out): {len(stalls)}",
        f"- runs that lost files: {len(lossy)} "
        f"({sum(r.expected_files - (r.delivered_files or 0) for r in lossy)} files)",
        "- runs with any flag (timeout, exit code, lost or extra files): "
        f"{len(failed)}",
        f"- wall time per run: min {walls[0]:.2f} s, "
        f"median {statistics.median(walls):.2f} s, max {walls[-1]:.2f} s",
    ]
    if failed:
        lines += ["", "| run | flags | log |", "|---:|---|---|"]
        lines += [
            f"| {r.repetition} | {'; '.join(r.flags)} | {r.measurement.stderr_path} |"
            for r in failed
        ]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "soak-latest.md").write_text("\n".join(lines) + "\n")
    (args.results_dir / "soak-latest.json").write_text(
        _runs_json(meta, records)
    )
    print("\n".join(lines))
    return 1 if failed else 0


def run_memory_scaling(args: argparse.Namespace) -> int:
    """Measure each sender's peak RSS for 1,000 and 10,000 tiny files (variant B)."""
    start = time.perf_counter()
    meta = _common_meta(args, datetime.datetime.now())
    logs_dir = args.results_dir / "logs-memory"
    if logs_dir.exists():
        shutil.rmtree(logs_dir)
    settings = dataclasses.replace(
        _settings(args, logs_dir, args.timeout), measure_pss=True)
    tiny = ensure_corpus(args.cache_dir, "tiny", 10000)
    first = tiny.path / "000"
    first_bytes = sum(p.stat().st_size for p in first.glob("*.dcm"))
    sets = [
        Corpus("tiny-1000", first, 1000, first_bytes),
        Corpus("tiny-10000", tiny.path, tiny.file_count, tiny.total_bytes),
    ]
    tools = [
        t for t in _select_tools(args)
        if t.available and (t.kind is ToolKind.PEER or t.name in
                            ("dicomsend -j1 -w1", "dicomsend -j4 -w2"))
    ]
    if not any(t.kind is ToolKind.DICOMSEND for t in tools):
        print("dicomsend is not available; measuring the peers only", file=sys.stderr)

    records = []
    try:
        for corpus in sets:
            for tool in tools:
                records.append(run_sender(tool, corpus, Variant.DISCARD, 1, settings))
    finally:
        shutil.rmtree(settings.output_root, ignore_errors=True)
    _finish_meta(meta, start)

    by_key = {(r.tool, r.corpus): r for r in records}
    lines = [
        "# Peak memory for 1,000 and 10,000 files",
        "",
        f"Measured {meta['started']} with `{meta['command']}`; storescp variant B "
        "(discard); one run each. Peak RSS and peak PSS are summed over every "
        "process of the tool; RSS counts the pages a forked child shares with "
        "its parent once per process, PSS counts every page once.",
        "",
        "| tool | peak RSS MB, 1,000 files | 10,000 files | ratio "
        "| peak PSS MB, 1,000 files | 10,000 files | ratio "
        "| wall s, 10,000 files | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for tool in tools:
        small_run = by_key[(tool.name, "tiny-1000")].measurement
        large_record = by_key[(tool.name, "tiny-10000")]
        large_run = large_record.measurement
        flags = by_key[(tool.name, "tiny-1000")].flags + large_record.flags
        cells = []
        for small, large in (
            (small_run.peak_rss_bytes, large_run.peak_rss_bytes),
            (small_run.peak_pss_bytes, large_run.peak_pss_bytes),
        ):
            ratio = f"{large / small:.2f}" if small else ""
            cells.append(f"{small / 1e6:.1f} | {large / 1e6:.1f} | {ratio}")
        lines.append(
            f"| {tool.name} | {' | '.join(cells)} "
            f"| {large_run.wall_s:.2f} | {'; '.join(flags) or 'ok'} |"
        )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "memory-latest.md").write_text("\n".join(lines) + "\n")
    (args.results_dir / "memory-latest.json").write_text(
        _runs_json(meta, records)
    )
    print("\n".join(lines))
    return 1 if any(r.flags for r in records) else 0


def _time_codec_alone(target: str, folder: Path) -> dict[str, float]:
    """Time the frame encoder and the whole transcoder in this process.

    The encoder runs on pixel arrays already decoded into memory, as
    ``perf.transcode_bench`` does. The transcoder reads each file, decodes it,
    encodes it and produces the data set bytes, which is what one transcode
    worker does per file.
    """
    import pydicom

    from perf.corpus import list_dicom_files
    from perf.transcode_bench import time_codec
    from transcode.transcoder import Transcoder

    paths = list_dicom_files(folder)
    codec_s = time_codec(target, paths)
    transcoder = Transcoder(target, allow_lossy=False)
    start = time.perf_counter()
    for path in paths:
        transcoder.transcode(pydicom.dcmread(path)).dataset_bytes()
    transcoder_s = time.perf_counter() - start
    return {"codec_s": codec_s or 0.0, "transcoder_s": transcoder_s}


def run_transcode(args: argparse.Namespace) -> int:
    """Time ``dicomsend send -t TARGET`` with 1 and 2 workers against the codec."""
    words, reason = find_dicomsend()
    if words is None:
        print(f"dicomsend is not available: {reason}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    meta = _common_meta(args, datetime.datetime.now())
    logs_dir = args.results_dir / "logs-transcode"
    if logs_dir.exists():
        shutil.rmtree(logs_dir)
    settings = _settings(args, logs_dir, args.timeout)
    corpus = ensure_corpus(args.cache_dir, "ct", args.transcode_files)
    target = args.transcode_target
    tools = [
        Tool(f"dicomsend -t {target} -j1 -w{workers}", ToolKind.DICOMSEND,
             (*words, "send"), ("-t", target, "-j", "1", "-w", str(workers)))
        for workers in (1, 2)
    ]

    records: list[RunRecord] = []
    alone: list[dict[str, float]] = []
    try:
        for rep in range(1, args.reps + 1):
            for tool in tools:
                records.append(run_sender(tool, corpus, Variant.DISCARD, rep, settings))
            alone.append(_time_codec_alone(target, corpus.path))
    finally:
        shutil.rmtree(settings.output_root, ignore_errors=True)
    _finish_meta(meta, start)

    count = corpus.file_count
    walls = {
        tool.name: statistics.median(
            r.measurement.wall_s for r in records if r.tool == tool.name)
        for tool in tools
    }
    # dicomsend's summary line gives the time of the transfer itself, from
    # the start of the pipeline to the last outcome: no interpreter start-up
    # and no header reads, but the workers' start is in it.
    transfers = {
        tool.name: statistics.median(
            _summary_seconds(r) for r in records if r.tool == tool.name)
        for tool in tools
    }
    codec_s = statistics.median(a["codec_s"] for a in alone)
    transcoder_s = statistics.median(a["transcoder_s"] for a in alone)
    one, two = (walls[tool.name] for tool in tools)
    flags = sorted({flag for r in records for flag in r.flags})
    lines = [
        f"# Transcoding pipeline: {target}",
        "",
        f"Measured {meta['started']} with `{meta['command']}`: corpus `ct` "
        f"({count} files, {corpus.total_bytes / 1e6:.1f} MB), storescp variant B "
        f"(discard), {args.reps} repetition(s), medians. CPU: "
        f"{meta['machine'].get('cpu_model', '?')}, "
        f"{meta['machine'].get('usable_cpus', '?')} CPUs; load average at the start "
        f"{', '.join(f'{v:.2f}' for v in meta['machine'].get('load_average', []))}.",
        "",
        "| what | wall s | files/s |",
        "|---|---:|---:|",
        f"| encoder alone, 1 process, pixels in memory | {codec_s:.2f} "
        f"| {count / codec_s:.1f} |" if codec_s else "| encoder alone | n/a | |",
        f"| transcoder alone, 1 process: read, decode, encode, bytes | "
        f"{transcoder_s:.2f} | {count / transcoder_s:.1f} |",
        *(f"| `{name}` (whole command, start-up included) | {wall:.2f} "
          f"| {count / wall:.1f} |" for name, wall in walls.items()),
        *(f"| `{name}`, transfer only (its summary line) | {seconds:.2f} "
          f"| {count / seconds:.1f} |" for name, seconds in transfers.items()
          if seconds),
        "",
        f"- 2 workers / 1 worker: {one / two:.2f}x the throughput (whole "
        "command)",
        f"- pipeline with 1 worker over the encoder alone: "
        f"{(one / codec_s - 1) * 100:+.0f}% time" if codec_s else "",
        f"- pipeline with 1 worker over the transcoder alone: "
        f"{(one / transcoder_s - 1) * 100:+.0f}% time",
        f"- runs flagged: {', '.join(flags) if flags else 'none'}",
    ]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "transcode-latest.md").write_text("\n".join(lines) + "\n")
    meta["alone"] = alone
    (args.results_dir / "transcode-latest.json").write_text(_runs_json(meta, records))
    print("\n".join(lines))
    return 1 if flags else 0


def _summary_seconds(record: RunRecord) -> float:
    """Return the duration in dicomsend's summary line, or 0 if there is none."""
    try:
        text = Path(record.measurement.stdout_path).read_text()
    except OSError:
        return 0.0
    match = re.search(r" in ([0-9.]+) s \(", text)
    return float(match.group(1)) if match else 0.0


def compile_project() -> None:
    """Write the bytecode of the project's packages before anything is timed.

    ``pip install`` compiles a package's modules. A checkout run in place with
    ``PYTHONDONTWRITEBYTECODE`` set would compile every module again at each
    start (about 30 ms for dicomsend), which no installed copy pays.
    """
    for package in ("engine", "transcode", "perf"):
        folder = PROJECT_ROOT / package
        if folder.is_dir() and not compileall.compile_dir(
                str(folder), quiet=1, maxlevels=0):
            logger.warning("Could not compile every module of %s; start-up "
                           "times include compiling them", folder)


def main(argv: list[str] | None = None) -> int:
    """Run the mode that the command line selects; return the exit code.

    The exit code is 0 when every run delivered every file, 1 when any run
    was flagged, and 2 when dicomsend is needed but not available.
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The JPEG 2000 encoder logs every tile at INFO.
    logging.getLogger("openjpeg").setLevel(logging.WARNING)
    compile_project()
    if args.soak is not None:
        if args.soak < 1:
            print(f"Invalid --soak {args.soak}; use 1 or more runs", file=sys.stderr)
            return 2
        return run_soak(args)
    if args.memory_scaling:
        return run_memory_scaling(args)
    if args.transcode:
        return run_transcode(args)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
