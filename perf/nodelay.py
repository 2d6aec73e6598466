"""Check with strace which tools really set TCP_NODELAY on their sockets.

Each sender, and the storescp that receives from them, runs once under
``strace -f -e trace=setsockopt`` while sending a small folder. A tool counts
as "on" if any of its processes called ``setsockopt(..., TCP_NODELAY, [1])``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from perf.receiver import StoreScp, Variant, nodelay_env
from perf.tools import PROJECT_ROOT, Tool, ToolKind

logger = logging.getLogger(__name__)

RECEIVER_NAME = "storescp (receiver)"
_NODELAY_ON = re.compile(r"TCP_NODELAY, \[1\]")


def _state(trace: Path) -> str:
    if not trace.is_file():
        return "unknown: no strace output"
    return "on" if _NODELAY_ON.search(trace.read_text(errors="replace")) else "off"


def check_nodelay(
    tools: list[Tool], folder: Path, work_dir: Path, max_pdu: int
) -> dict[str, str]:
    """Return ``{tool name: "on" | "off" | reason}`` for the receiver and each tool.

    Only the first dicomsend configuration is traced, under the name
    ``"dicomsend"``, because all of them run the same program.

    Parameters
    ----------
    tools : list of Tool
        The senders; unavailable ones are skipped.
    folder : Path
        A small folder of DICOM files to send.
    work_dir : Path
        Folder for the strace outputs and the receiver's files.
    max_pdu : int
        Maximum PDU size of the receiver.
    """
    strace = shutil.which("strace")
    if strace is None:
        return {RECEIVER_NAME: "not checked: strace not found"}

    work_dir.mkdir(parents=True, exist_ok=True)
    trace_words = [strace, "-f", "-qq", "-e", "trace=setsockopt", "-o"]
    scp_trace = work_dir / "storescp.strace"
    results: dict[str, str] = {}
    traced_dicomsend = False
    scp = StoreScp(
        Variant.DISCARD,
        work_dir / "received",
        work_dir / "storescp.log",
        max_pdu,
        command_prefix=[*trace_words, str(scp_trace)],
    )
    with scp:
        for tool in tools:
            if not tool.available:
                continue
            name = tool.name
            if tool.kind is ToolKind.DICOMSEND:
                if traced_dicomsend:
                    continue
                traced_dicomsend = True
                name = "dicomsend"
            trace = work_dir / f"{name}.strace"
            command = [*trace_words, str(trace), *tool.build(scp.port, folder, False)]
            try:
                subprocess.run(
                    command,
                    env=nodelay_env(),
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    timeout=120,
                )
            except subprocess.TimeoutExpired:
                results[name] = "unknown: timed out after 120 s"
                continue
            results[name] = _state(trace)
        scp.wait_idle()
        results[RECEIVER_NAME] = _state(scp_trace)
    logger.info("TCP_NODELAY check: %s", results)
    return results
