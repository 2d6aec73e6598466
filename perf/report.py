"""Write the benchmark results as Markdown, JSON and a PNG bar chart."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

from perf.runs import NO_VARIANT, Summary  # noqa: E402
from perf.tools import ToolKind  # noqa: E402

logger = logging.getLogger(__name__)

MB = 1e6


def _best_dicomsend(rows: list[Summary]) -> Summary | None:
    """Return the fastest unflagged dicomsend row of this copy (not a baseline)."""
    clean = [r for r in rows if r.kind == ToolKind.DICOMSEND.value and not r.flags
             and not r.tool.startswith("baseline")]
    return max(clean, key=lambda r: r.files_per_s, default=None)


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _ratio_cells(row: Summary, best: Summary | None) -> tuple[str, str]:
    if row.kind == ToolKind.DICOMSEND.value and not row.tool.startswith("baseline"):
        return "", ""
    if best is None:
        return "n/a", "n/a"
    speed = f"{best.files_per_s / row.files_per_s:.2f}x" if row.files_per_s else ""
    cpu = f"{best.cpu_s / row.cpu_s:.2f}x" if row.cpu_s and row.kind != "limit" else ""
    return speed, cpu


def _table(rows: list[Summary], best: Summary | None) -> list[str]:
    lines = [
        "| tool | runs | wall s | files/s | MB/s | CPU s | peak RSS MB "
        "| best dicomsend speed / this | best dicomsend CPU / this | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        speed, cpu = _ratio_cells(row, best)
        status = "; ".join(row.flags) if row.flags else "ok"
        if row.flags:
            status = f"**{status}**"
        lines.append(
            f"| {row.tool} | {row.runs} | {_fmt(row.wall_s, 2)} "
            f"| {_fmt(row.files_per_s)} | {_fmt(row.mb_per_s)} | {_fmt(row.cpu_s, 2)} "
            f"| {_fmt(row.peak_rss_bytes / MB)} | {speed} | {cpu} | {status} |"
        )
    return lines


def write_markdown(path: Path, meta: dict[str, Any], summaries: list[Summary]) -> None:
    """Write the results page: run settings, machine, one table per corpus and variant.

    Parameters
    ----------
    path : Path
        The Markdown file to write.
    meta : dict
        The ``meta`` section of the JSON results (settings, machine, versions,
        corpora, TCP_NODELAY check, unavailable tools).
    summaries : list of Summary
        Medians per corpus, variant and tool.
    """
    machine = meta["machine"]
    out = [
        "# dicomsend benchmark results",
        "",
        f"Measured {meta['started']} with `{meta['command']}` "
        f"({meta['duration_s']:.0f} s in all). How to read the figures: "
        "`perf/README.md`.",
        "",
        "## Machine and software",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['usable_cpus']} usable), {machine['memory_gib']:.1f} GiB memory, "
        f"Linux {machine['kernel']}, Python {machine['python']}",
        f"- Load average (1, 5, 15 min) at the start: "
        f"{', '.join(f'{x:.2f}' for x in machine['load_average'])}; at the end: "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average_end'])}",
    ]
    for name, version in meta["software"].items():
        out.append(f"- {name}: {version}")
    out += [
        "",
        "## Settings",
        "",
        f"- Repetitions per cell: {meta['repetitions']} (the tables show medians); "
        f"timeout per run: {meta['timeout_s']:.0f} s",
        f"- Receiver: `{meta['receiver']}` on 127.0.0.1, a fresh process per run",
        "- Variant A: " + meta["variants"].get("A", "not run"),
        "- Variant B: " + meta["variants"].get("B", "not run"),
        "- `TCP_NODELAY=1` is in the environment of every process; the check below "
        "traces `setsockopt` to see who really set it:",
        "",
        "| process | TCP_NODELAY |",
        "|---|---|",
    ]
    out += [f"| {name} | {state} |" for name, state in meta["nodelay"].items()]
    if meta["unavailable"]:
        out += ["", "Not available in this run:", ""]
        out += [f"- {name}: {reason}" for name, reason in meta["unavailable"].items()]

    for corpus in meta["corpora"]:
        out += [
            "",
            f"## Corpus `{corpus['name']}`: {corpus['file_count']} files, "
            f"{corpus['total_bytes'] / MB:,.1f} MB",
        ]
        own = [s for s in summaries if s.corpus == corpus["name"]]
        limits = [s for s in own if s.variant == NO_VARIANT]
        for variant in meta["variants"]:
            rows = [s for s in own if s.variant == variant]
            if not rows:
                continue
            out += ["", f"### Variant {variant}", ""]
            out += _table(rows + limits, _best_dicomsend(rows))
    path.write_text("\n".join(out) + "\n")
    logger.info("wrote %s", path)


def write_json(path: Path, meta: dict[str, Any], summaries: list[Summary],
               runs: list[dict[str, Any]]) -> None:
    """Write settings, medians and every single run as JSON."""
    document = {
        "meta": meta,
        "summaries": [s.to_dict() for s in summaries],
        "runs": runs,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    logger.info("wrote %s", path)


def write_chart(path: Path, meta: dict[str, Any], summaries: list[Summary]) -> None:
    """Draw MB/s per tool, one panel per corpus and variant; flagged runs in red."""
    corpora = [c["name"] for c in meta["corpora"]]
    variants = list(meta["variants"])
    if not corpora or not variants:
        return
    fig, axes = plt.subplots(
        len(corpora),
        len(variants),
        figsize=(6.5 * len(variants), 0.5 + 3.2 * len(corpora)),
        squeeze=False,
    )
    colours = {"peer": "#4c72b0", "dicomsend": "#55a868", "limit": "#999999"}
    for i, corpus in enumerate(corpora):
        own = [s for s in summaries if s.corpus == corpus]
        limits = [s for s in own if s.variant == NO_VARIANT]
        for j, variant in enumerate(variants):
            ax = axes[i][j]
            rows = [s for s in own if s.variant == variant] + limits
            names = [r.tool for r in rows]
            values = [r.mb_per_s for r in rows]
            bar_colours = ["#c44e52" if r.flags else colours[r.kind] for r in rows]
            ax.barh(names, values, color=bar_colours)
            ax.invert_yaxis()
            for y, row in enumerate(rows):
                label = f" {row.mb_per_s:,.0f}"
                if row.flags:
                    label += "  (flagged)"
                ax.text(row.mb_per_s, y, label, va="center", fontsize=8)
            ax.set_title(f"{corpus}, variant {variant}", fontsize=10)
            ax.set_xlabel("MB/s (median)")
            ax.tick_params(axis="y", labelsize=8)
            ax.set_xlim(0, max(values, default=1) * 1.3 or 1)
    fig.suptitle("dicomsend and peers on 127.0.0.1 (red: lost files, timeout or error)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)
