"""``dicomsend demo``: a receiver and a sender on 127.0.0.1, end to end.

It starts ``dicomsend receive`` as a separate process on a free loopback
port, sends the sample files that ship inside pydicom re-encoded to the
chosen transfer syntax, prints the summary and stops the receiver.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import pydicom

from engine.errors import AssociationError
from engine.scu import StoreScu

RECEIVER_START_SECONDS = 20.0
SHOWN_FAILURES = 10


def pydicom_sample_folder() -> Path:
    """Return the folder of test files installed with pydicom."""
    return Path(pydicom.__file__).parent / "data" / "test_files"


def run_demo(
    transfer_syntax: str,
    out_dir: str | None,
    concurrency: int,
    transcode_workers: int | None,
) -> int:
    """Run the demo and return the process exit code (0 when it ran through)."""
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="dicomsend-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    port = _free_loopback_port()

    scu = StoreScu(
        f"127.0.0.1:{port}",
        called_ae_title="DICOMSEND",
        transfer_syntax=transfer_syntax,
        concurrency=concurrency,
        transcode_workers=transcode_workers,
    )
    scu.add_directory(pydicom_sample_folder())

    receiver = _start_receiver(port, out)
    try:
        click.echo(f"Sending {scu.queued_files} pydicom sample files to "
                   f"127.0.0.1:{port} as {transfer_syntax}")
        result = scu.send()
    except AssociationError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 3
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)

    from engine.cli import summary_line

    click.echo(summary_line(result))
    if result.failures:
        click.echo("pydicom's samples include deliberately damaged files and "
                   "pixel formats the target syntax cannot hold; each was "
                   "reported, not sent:")
    for failure in result.failures[:SHOWN_FAILURES]:
        click.echo(f"  not stored: {failure.error}")
    if len(result.failures) > SHOWN_FAILURES:
        click.echo(f"  ... and {len(result.failures) - SHOWN_FAILURES} more")
    stored = len(list(out.glob("*.dcm")))
    click.echo(f"The receiver wrote {stored} objects to {out}")
    return 0


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_receiver(port: int, out: Path) -> subprocess.Popen[bytes]:
    """Start ``dicomsend receive`` and wait until it accepts connections."""
    receiver = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "receive", "--port", str(port),
         "--out", os.fspath(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + RECEIVER_START_SECONDS
    while time.monotonic() < deadline:
        if receiver.poll() is not None:
            raise click.ClickException(
                f"The demo receiver stopped at start with exit code "
                f"{receiver.returncode}; run 'dicomsend receive --port {port} "
                f"--out {out}' to see why"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return receiver
        except OSError:
            time.sleep(0.1)
    receiver.terminate()
    raise click.ClickException(
        f"The demo receiver did not listen on 127.0.0.1:{port} within "
        f"{RECEIVER_START_SECONDS:.0f} s"
    )
