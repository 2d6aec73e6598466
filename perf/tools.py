"""The senders under test and the command line that each one runs.

Every sender sends one whole folder (recursively) to one storescp, on one
association where the tool allows that choice; dicomsend uses ``-j``
associations at once.

- DCMTK ``storescu`` scans the folder itself (``+sd +r``). By default it
  proposes the uncompressed transfer syntaxes only, so a JPEG 2000 corpus also
  gets ``-xv`` (propose JPEG 2000 lossless as well).
- DCMTK ``dcmsend`` scans the folder (``+sd +r``) and proposes what the files
  need; it opens another association only if the contexts do not fit in one.
- pynetdicom's storescu app (``-r``) proposes its default storage contexts
  with uncompressed transfer syntaxes; for a compressed corpus it needs
  ``-cx``, which reads every file once more up front to find the contexts.
  It exits with 0 even when stores fail, so only the receiver's count shows
  a loss.
- ``dicomsend send 127.0.0.1:PORT FOLDER -j J -w W``.
"""

from __future__ import annotations

import enum
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STORESCU = "/usr/bin/storescu"
DCMSEND = "/usr/bin/dcmsend"
CALLING_AE = "BENCHSCU"
CALLED_AE = "STORESCP"


class ToolKind(enum.Enum):
    """What a row of the report measures."""

    PEER = "peer"
    DICOMSEND = "dicomsend"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class Tool:
    """One sender configuration.

    ``command`` is the command line before the address, port and folder, and
    ``options`` (dicomsend only) come after them; ``build`` puts them together.
    """

    name: str
    kind: ToolKind
    command: tuple[str, ...]
    options: tuple[str, ...] = ()
    available: bool = True
    unavailable_reason: str = ""

    def build(self, port: int, folder: Path, compressed: bool) -> list[str]:
        """Return the full command line that sends ``folder`` to ``port``."""
        if self.name == "storescu":
            syntax = ["-xv"] if compressed else []
            return [
                *self.command,
                "-aet",
                CALLING_AE,
                "-aec",
                CALLED_AE,
                "+sd",
                "+r",
                *syntax,
                "127.0.0.1",
                str(port),
                str(folder),
            ]
        if self.name == "dcmsend":
            return [
                *self.command,
                "-aet",
                CALLING_AE,
                "-aec",
                CALLED_AE,
                "+sd",
                "+r",
                "127.0.0.1",
                str(port),
                str(folder),
            ]
        if self.name == "pynetdicom":
            contexts = ["-cx"] if compressed else []
            return [
                *self.command,
                "-aet",
                CALLING_AE,
                "-aec",
                CALLED_AE,
                "-r",
                *contexts,
                "127.0.0.1",
                str(port),
                str(folder),
            ]
        if self.kind is ToolKind.DICOMSEND:
            return [*self.command, f"127.0.0.1:{port}", str(folder), *self.options]
        raise ValueError(f"Unknown tool {self.name!r}; no command line for it")


def peer_tools() -> list[Tool]:
    """Return DCMTK storescu, DCMTK dcmsend and pynetdicom's storescu app."""
    tools = []
    for name, path in (("storescu", STORESCU), ("dcmsend", DCMSEND)):
        if Path(path).is_file():
            tools.append(Tool(name, ToolKind.PEER, (path,)))
        else:
            reason = f"{path} not found; install DCMTK (apt-get install dcmtk)"
            tools.append(Tool(name, ToolKind.PEER, (path,), (), False, reason))
    pynetdicom = (sys.executable, "-m", "perf.pynetdicom_storescu")
    tools.append(Tool("pynetdicom", ToolKind.PEER, pynetdicom))
    return tools


def find_dicomsend() -> tuple[list[str] | None, str]:
    """Find a working ``dicomsend`` command line.

    The console script beside this interpreter comes first, then the one on
    PATH, then ``engine.cli:main`` run by this interpreter from the project
    root.

    Returns
    -------
    tuple
        The command words (or None) and a reason when none works.
    """
    candidates: list[list[str]] = []
    # The script installed beside this interpreter comes first: a version
    # manager's shim found on PATH (pyenv's is a bash script that runs
    # ``pyenv exec``) adds about 50 ms to every run, which no user of an
    # installed dicomsend pays.
    beside = Path(sys.executable).parent / "dicomsend"
    if beside.is_file():
        candidates.append([str(beside)])
    script = shutil.which("dicomsend")
    if script and script != str(beside):
        candidates.append([script])
    run_cli = "import sys; from engine.cli import main; sys.exit(main())"
    candidates.append([sys.executable, "-c", run_cli])
    reason = "no dicomsend command found"
    for words in candidates:
        try:
            result = subprocess.run(
                [*words, "send", "--help"],
                capture_output=True,
                timeout=60,
                cwd=PROJECT_ROOT,
                text=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"'{' '.join(words)} send --help' failed: {exc}"
            continue
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            last = lines[-1] if lines else f"exit code {result.returncode}"
            reason = f"'dicomsend send --help' failed: {last}"
            continue
        missing = [opt for opt in ("-j", "-w") if opt not in result.stdout]
        if missing:
            reason = f"'dicomsend send' has no option {', '.join(missing)}"
            continue
        return words, ""
    return None, reason


def baseline_tools(root: Path, jobs: list[int], workers: list[int]) -> list[Tool]:
    """Return dicomsend rows that run the ``engine`` package found in ``root``.

    ``root`` is another copy of the project, for example ``git archive`` of
    an older commit unpacked into a folder. Its ``engine.cli`` runs with this
    interpreter, with ``root`` first on ``sys.path``. The rows are named
    ``baseline -jJ -wW``, so one report compares the two copies run by run.
    """
    available = (root / "engine" / "cli.py").is_file()
    reason = "" if available else f"{root} has no engine/cli.py"
    # The harness runs tools from this project's root, which ``python -c``
    # puts first on sys.path; an editable install of this copy adds a finder
    # as well. Both would import this copy, so the command puts ``root``
    # first and drops the editable finder before importing ``engine``.
    run_cli = (
        "import sys; "
        "sys.meta_path[:] = [f for f in sys.meta_path "
        "if 'editable' not in getattr(f, '__module__', '')]; "
        f"sys.path.insert(0, {str(root)!r}); "
        "from engine.cli import main; sys.exit(main())"
    )
    command = (sys.executable, "-c", run_cli, "send")
    return [
        Tool(f"baseline -j{j} -w{w}", ToolKind.DICOMSEND, command,
             ("-j", str(j), "-w", str(w)), available=available,
             unavailable_reason=reason)
        for j in jobs
        for w in workers
    ]


def dicomsend_tools(jobs: list[int], workers: list[int]) -> list[Tool]:
    """Return one dicomsend tool per (-j, -w) pair, marked unavailable if absent."""
    words, reason = find_dicomsend()
    if words is None:
        logger.warning("dicomsend is not available: %s", reason)
    tools = []
    for j in jobs:
        for w in workers:
            tools.append(
                Tool(
                    f"dicomsend -j{j} -w{w}",
                    ToolKind.DICOMSEND,
                    (*(words or ["dicomsend"]), "send"),
                    ("-j", str(j), "-w", str(w)),
                    available=words is not None,
                    unavailable_reason=reason,
                )
            )
    return tools
