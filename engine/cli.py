"""The ``dicomsend`` command line: send, echo, plan, convert, receive and demo.

Exit codes of ``send``:

== ==============================================================================
0  every file was stored (some may have had warning statuses)
1  some files failed; the summary and the log list them
2  invalid command line or option
3  no association (receiver unreachable or rejecting), or --scheduler unreachable
4  interrupted (Ctrl-C) before every file had an outcome
== ==============================================================================
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import click

from engine.dask_backend import DaskSchedulerError
from engine.errors import (
    AssociationError,
    AssociationRejectedError,
    ConnectionFailedError,
    DicomSendError,
)
from engine.events import Event
from engine.options import (
    DEFAULT_CALLED_AE_TITLE,
    DEFAULT_CALLING_AE_TITLE,
    DEFAULT_MAX_PDU_LENGTH,
    Timeouts,
    parse_address,
    validate_ae_title,
)
from engine.result import SendResult
from engine.s3 import S3Error, is_s3_url
from engine.scu import StoreScu
from engine.tls import validate_tls

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_ASSOCIATION = 3
EXIT_INTERRUPTED = 4


def configure_logging(verbosity: int) -> None:
    """Show warnings always, INFO with -v and DEBUG with -vv, on stderr."""
    level = logging.WARNING
    if verbosity == 1:
        level = logging.INFO
    elif verbosity >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("engine", "transcode"):
        logging.getLogger(name).setLevel(level)


# API option names as the command line spells them, for error messages.
CLI_OPTION_NAMES = {
    "calling_ae_title": "--calling-ae",
    "called_ae_title": "--called-ae",
    "max_pdu_length": "--max-pdu",
    "transfer_syntax": "--transfer-syntax",
    "transcode_workers": "--transcode-workers",
    "concurrency": "--concurrency",
    "dimse_timeout": "--timeout",
    "connect_timeout": "--connect-timeout",
    "acse_timeout": "--connect-timeout",
    "network_timeout": "--timeout",
    "retries": "--retries",
    "allow_lossy=True (--allow-lossy on the command line)": "--allow-lossy",
    "ae_title": "--ae-title",
    "commit_timeout": "--commit-timeout",
    "commit_listen_port": "--commit-port",
    "report": "--report",
    "journal": "--journal",
    "tls_ca_file": "--tls-ca",
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
    "allow_calling_ae": "--allow-calling-ae",
    "scheduler": "--scheduler",
}


def _usage_error(exc: Exception) -> click.UsageError:
    """Turn an API ValueError into a usage error that names CLI options."""
    message = str(exc).replace(", or None to wait forever", "")
    for api_name, cli_name in CLI_OPTION_NAMES.items():
        # A plain word such as "report" is an option name only right after
        # "Invalid"; names with an underscore are option names anywhere.
        prefix = "" if "_" in api_name else "(?<=Invalid )"
        message = re.sub(rf"{prefix}(?<![\w-]){re.escape(api_name)}(?![\w-])",
                         cli_name, message)
    return click.UsageError(message)


def tls_options(command: Any) -> Any:
    """Add the DICOM TLS options shared by send and echo."""
    options = [
        click.option("--tls", "tls", is_flag=True,
                     help="Secure the associations with TLS (DICOM TLS)."),
        click.option("--tls-ca", "tls_ca_file", default=None,
                     type=click.Path(dir_okay=False),
                     help="PEM certificates that may sign the receiver's "
                          "(default: the system's). Implies --tls."),
        click.option("--tls-cert", "tls_cert_file", default=None,
                     type=click.Path(dir_okay=False),
                     help="Our PEM certificate. Implies --tls."),
        click.option("--tls-key", "tls_key_file", default=None,
                     type=click.Path(dir_okay=False),
                     help="The private key of --tls-cert, PEM, without a password."),
        click.option("--tls-no-verify", "tls_no_verify", is_flag=True,
                     help="Do not check the receiver's certificate (encrypts "
                          "without authenticating the receiver)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dicomsend")
def main() -> None:
    """Send DICOM files to a PACS, transcoding pixel data when needed."""


# send


@main.command()
@click.argument("addr")
@click.argument("paths", nargs=-1, required=True)
@click.option("--calling-ae", default=DEFAULT_CALLING_AE_TITLE, show_default=True,
              help="Our AE title.")
@click.option("--called-ae", default=DEFAULT_CALLED_AE_TITLE, show_default=True,
              help="The receiver's AE title.")
@click.option("--max-pdu", default=DEFAULT_MAX_PDU_LENGTH, show_default=True,
              type=int, help="Largest PDU we accept, in bytes (4096-131072).")
@click.option("--transfer-syntax", "-t", default=None,
              help="Send every file in this transfer syntax: a UID or a keyword "
                   "such as ExplicitVRLittleEndian or JPEG2000Lossless. Default: "
                   "each file's own.")
@click.option("--concurrency", "-j", default=1, show_default=True, type=int,
              help="Parallel associations, one sender process each.")
@click.option("--transcode-workers", "-w", default=None, type=int,
              help="Processes that re-encode pixel data. Default: CPU count.")
@click.option("--allow-lossy", is_flag=True,
              help="Permit a lossy --transfer-syntax such as JPEGBaseline.")
@click.option("--verify", is_flag=True,
              help="Decode each losslessly re-encoded file and compare its "
                   "pixels before sending.")
@click.option("--retries", default=2, show_default=True, type=int,
              help="Times a file is sent again after a transient failure: "
                   "abort, timeout, reset, rejected-transient or 0xA7xx.")
@click.option("--timeout", "dimse_timeout", default=60.0, show_default=True,
              type=float, help="Seconds to wait for each response.")
@click.option("--connect-timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for the connection and association.")
@click.option("--journal", default=None, type=click.Path(dir_okay=False),
              help="SQLite file recording each file's outcome; run the same "
                   "command again with it to send only what is not yet stored.")
@click.option("--report", default=None, type=click.Path(dir_okay=False),
              help="Write one record per file to this .jsonl or .csv file as "
                   "files finish.")
@click.option("--commit", is_flag=True,
              help="Ask the receiver to commit the stored files (storage "
                   "commitment); files it does not commit count as failed.")
@click.option("--commit-port", default=None, type=int,
              help="Port to listen on for a commitment report the receiver sends "
                   "on a new association. Default: wait on the same association.")
@click.option("--commit-timeout", default=60.0, show_default=True, type=float,
              help="Seconds to wait for the storage commitment report.")
@click.option("--s3-endpoint", default=None,
              help="S3 endpoint URL for s3:// paths. Default: boto3's "
                   "(AWS_ENDPOINT_URL_S3, the profile, or AWS).")
@click.option("--scheduler", default=None,
              help="Re-encode on the dask.distributed cluster of this scheduler "
                   "(tcp://HOST:PORT) instead of local processes; the "
                   "associations stay on this machine.")
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
@click.option("--verbose", "-v", count=True,
              help="Log the protocol conversation (-vv for every PDU).")
@tls_options
def send(
    addr: str,
    paths: Sequence[str],
    calling_ae: str,
    called_ae: str,
    max_pdu: int,
    transfer_syntax: str | None,
    concurrency: int,
    transcode_workers: int | None,
    allow_lossy: bool,
    verify: bool,
    retries: int,
    dimse_timeout: float,
    connect_timeout: float,
    journal: str | None,
    report: str | None,
    commit: bool,
    commit_port: int | None,
    commit_timeout: float,
    s3_endpoint: str | None,
    scheduler: str | None,
    no_progress: bool,
    verbose: int,
    tls: bool,
    tls_ca_file: str | None,
    tls_cert_file: str | None,
    tls_key_file: str | None,
    tls_no_verify: bool,
) -> None:
    """Send the DICOM files in PATHS (files or folders) to ADDR (host:port)."""
    configure_logging(verbose)
    try:
        scu = StoreScu(
            addr,
            calling_ae_title=calling_ae,
            called_ae_title=called_ae,
            max_pdu_length=max_pdu,
            verbose=verbose > 0,
            transfer_syntax=transfer_syntax,
            concurrency=concurrency,
            transcode_workers=transcode_workers,
            allow_lossy=allow_lossy,
            verify=verify,
            retries=retries,
            dimse_timeout=dimse_timeout,
            connect_timeout=connect_timeout,
            acse_timeout=connect_timeout,
            journal=journal,
            report=report,
            commit=commit,
            commit_listen_port=commit_port,
            commit_timeout=commit_timeout,
            s3_endpoint_url=s3_endpoint,
            tls=tls,
            tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_verify=not tls_no_verify,
            scheduler=scheduler,
        )
    except ValueError as exc:
        raise _usage_error(exc) from exc
    except ImportError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)

    try:
        for path in paths:
            if is_s3_url(path):
                # A key ending in "/" or a bare bucket is a prefix to list.
                if path.endswith("/") or "/" not in path[len("s3://"):]:
                    scu.add_directory(path)
                else:
                    scu.add_file(path)
            elif os.path.isdir(path):
                scu.add_directory(path)
            else:
                scu.add_file(path)
    except (FileNotFoundError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="PATHS") from exc
    except S3Error as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        click.echo("Interrupted while reading the input files; nothing was sent",
                   err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:
        raise _usage_error(exc) from exc

    sys.exit(run_send(scu, show_progress=not no_progress and sys.stderr.isatty()))


def run_send(scu: StoreScu, show_progress: bool) -> int:
    """Send with a progress bar and a summary; return the exit code."""
    progress = _Progress(scu.queued_files) if show_progress else None
    try:
        result = scu.send(
            on_file_sent=progress.advance if progress else None,
            on_file_error=_print_file_error(progress),
        )
    except (ConnectionFailedError, AssociationRejectedError) as exc:
        click.echo(f"Error: {exc}", err=True)
        return EXIT_NO_ASSOCIATION
    except AssociationError as exc:
        click.echo(f"Error: {exc}", err=True)
        return EXIT_NO_ASSOCIATION
    except DaskSchedulerError as exc:
        click.echo(f"Error: {exc}", err=True)
        return EXIT_NO_ASSOCIATION
    except KeyboardInterrupt:
        click.echo("Interrupted; files not yet sent were not sent", err=True)
        return EXIT_INTERRUPTED
    finally:
        if progress:
            progress.stop()

    if result.records:
        from rich.console import Console

        from engine.reports import summary_table

        Console().print(summary_table(result.records))
    click.echo(summary_line(result))
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.failed == 0 else EXIT_FILES_FAILED


def summary_line(result: SendResult) -> str:
    line = (f"Stored {result.successful} of {result.total_files} files, "
            f"{result.failed} failed, {len(result.warnings)} with warnings")
    if result.skipped:
        line += f", {result.skipped} skipped (not DICOM or DICOMDIR)"
    if result.already_stored:
        line += f", {result.already_stored} already stored (journal)"
    rate = result.total_files / result.duration_seconds if result.duration_seconds else 0
    return f"{line} in {result.duration_seconds:.2f} s ({rate:.0f} files/s)"


def _print_file_error(progress: _Progress | None) -> Any:
    def on_file_error(err: Exception | None, event: Event) -> None:
        if progress:
            progress.advance(err, event)

    return on_file_error


class _Progress:
    """A rich progress bar on stderr, advanced by the callbacks."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeRemainingColumn

        self.progress = Progress(
            TextColumn("Sending"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )
        self.task = self.progress.add_task("send", total=total)
        self.progress.start()

    def advance(self, err: Exception | None, event: Event) -> None:
        self.progress.advance(self.task)

    def stop(self) -> None:
        self.progress.stop()


# echo


@main.command()
@click.argument("addr")
@click.option("--calling-ae", default=DEFAULT_CALLING_AE_TITLE, show_default=True)
@click.option("--called-ae", default=DEFAULT_CALLED_AE_TITLE, show_default=True)
@click.option("--timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for the connection and each answer.")
@click.option("--verbose", "-v", count=True)
@tls_options
def echo(addr: str, calling_ae: str, called_ae: str, timeout: float,
         verbose: int, tls: bool, tls_ca_file: str | None, tls_cert_file: str | None,
         tls_key_file: str | None, tls_no_verify: bool) -> None:
    """Send a C-ECHO to ADDR to check the connection and AE titles."""
    from engine.echo import echo as send_echo

    configure_logging(verbose)
    try:
        address = parse_address(addr)
        calling = validate_ae_title("calling_ae_title", calling_ae)
        called = validate_ae_title("called_ae_title", called_ae)
        tls_settings = validate_tls(tls, tls_ca_file, tls_cert_file, tls_key_file,
                                    not tls_no_verify)
    except ValueError as exc:
        raise _usage_error(exc) from exc

    try:
        result = send_echo(
            address, calling_ae_title=calling, called_ae_title=called,
            max_pdu_length=DEFAULT_MAX_PDU_LENGTH,
            timeouts=Timeouts(connect=timeout, acse=timeout, dimse=timeout,
                              network=timeout),
            tls=tls_settings,
        )
    except AssociationError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_NO_ASSOCIATION)
    except DicomSendError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FILES_FAILED)

    click.echo(f"C-ECHO to {address}: {result.meaning} (0x{result.status:04X}) in "
               f"{result.round_trip_seconds * 1000:.1f} ms")
    sys.exit(EXIT_OK if result.status == 0 else EXIT_FILES_FAILED)


# receive


@main.command()
@click.option("--port", "-p", default=11112, show_default=True, type=int,
              help="TCP port to listen on (0 picks a free one and prints it).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 or :: listens on every interface.")
@click.option("--ae-title", default="DICOMSEND", show_default=True,
              help="Our AE title.")
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, writable=True),
              help="Folder to write received objects to (created if missing).")
@click.option("--allow-calling-ae", multiple=True,
              help="Accept only these calling AE titles (repeat the option).")
@click.option("--require-called-ae", is_flag=True,
              help="Reject associations whose called AE title is not --ae-title.")
@click.option("--verbose", "-v", count=True)
def receive(port: int, host: str, ae_title: str, out_dir: str,
            allow_calling_ae: Sequence[str], require_called_ae: bool,
            verbose: int) -> None:
    """Run a storage SCP that writes every received object to --out."""
    from engine.receiver import StorageReceiver

    configure_logging(max(verbose, 1))
    try:
        validate_ae_title("ae_title", ae_title)
        allowed = {validate_ae_title("allow_calling_ae", title)
                   for title in allow_calling_ae} or None
    except ValueError as exc:
        raise _usage_error(exc) from exc

    try:
        os.makedirs(out_dir, exist_ok=True)
        receiver = StorageReceiver(
            out_dir, host=host, port=port, ae_title=ae_title,
            allowed_calling_ae_titles=allowed,
            require_called_ae_title=require_called_ae,
        )
        receiver.start()
    except OSError as exc:
        click.echo(f"Error: unable to receive on {host}:{port} into '{out_dir}': "
                   f"{exc.strerror or exc}; choose another --port or --out",
                   err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"Listening on {host}:{receiver.port} as {ae_title}, writing to "
               f"{os.path.abspath(out_dir)}", err=True)
    receiver.serve_forever()


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False),
              help="Folder for the re-encoded files; the input tree is mirrored "
                   "below it and nothing is overwritten.")
@click.option("--transfer-syntax", "-t", required=True,
              help="Target transfer syntax: a UID or a keyword.")
@click.option("--transcode-workers", "-w", default=None, type=int,
              help="Processes that re-encode pixel data. Default: CPU count.")
@click.option("--allow-lossy", is_flag=True, help="Permit a lossy target.")
@click.option("--verify", is_flag=True,
              help="Decode each lossless result and compare its pixels.")
@click.option("--verbose", "-v", count=True)
def convert(paths: Sequence[str], out_dir: str, transfer_syntax: str,
            transcode_workers: int | None, allow_lossy: bool, verify: bool,
            verbose: int) -> None:
    """Re-encode the DICOM files in PATHS into --out, without sending them."""
    from engine.convert import convert_files
    from engine.options import default_transcode_workers, validate_count

    configure_logging(verbose)
    try:
        workers = validate_count("transcode_workers",
                                 transcode_workers or default_transcode_workers())
        result = convert_files(list(paths), out_dir, transfer_syntax,
                               workers=workers, allow_lossy=allow_lossy,
                               verify=verify)
    except ValueError as exc:
        raise _usage_error(exc) from exc

    for failure in result.failures:
        if logging.getLogger("engine").getEffectiveLevel() > logging.ERROR:
            click.echo(f"Error: {failure.error}", err=True)
    click.echo(f"Converted {result.converted} files, {result.failed} failed, "
               f"{result.skipped} skipped (not DICOM or DICOMDIR) into {out_dir}")
    sys.exit(EXIT_OK if result.failed == 0 else EXIT_FILES_FAILED)


@main.command()
@click.argument("addr")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--calling-ae", default=DEFAULT_CALLING_AE_TITLE, show_default=True,
              help="Our AE title.")
@click.option("--called-ae", default=DEFAULT_CALLED_AE_TITLE, show_default=True,
              help="The receiver's AE title.")
@click.option("--transfer-syntax", "-t", default=None,
              help="Plan sending every file in this transfer syntax (UID or "
                   "keyword). Default: each file's own.")
@click.option("--allow-lossy", is_flag=True,
              help="Permit a lossy --transfer-syntax such as JPEGBaseline.")
@click.option("--connect-timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for the connection and association.")
@click.option("--verbose", "-v", count=True,
              help="Log the protocol conversation (-vv for every PDU).")
def plan(addr: str, paths: Sequence[str], calling_ae: str, called_ae: str,
         transfer_syntax: str | None, allow_lossy: bool, connect_timeout: float,
         verbose: int) -> None:
    """Show what sending PATHS to ADDR would do, without sending anything."""
    from engine.plan import format_plan, plan_transfer

    configure_logging(verbose)
    try:
        result = plan_transfer(
            addr, list(paths), calling_ae_title=calling_ae,
            called_ae_title=called_ae, transfer_syntax=transfer_syntax,
            allow_lossy=allow_lossy,
            timeouts=Timeouts(connect=connect_timeout, acse=connect_timeout,
                              dimse=connect_timeout, network=connect_timeout),
        )
    except ValueError as exc:
        raise _usage_error(exc) from exc
    except AssociationError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_NO_ASSOCIATION)
    for line in format_plan(result):
        click.echo(line)
    sys.exit(EXIT_OK if not result.refused_files and not result.failed
             else EXIT_FILES_FAILED)


@main.command()
@click.option("--transfer-syntax", "-t", default="JPEG2000Lossless",
              show_default=True, help="Syntax to re-encode the samples into.")
@click.option("--out", "out_dir", default=None,
              help="Folder the demo receiver writes to. Default: a new temporary "
                   "folder.")
@click.option("--concurrency", "-j", default=2, show_default=True, type=int)
@click.option("--transcode-workers", "-w", default=None, type=int)
def demo(transfer_syntax: str, out_dir: str | None, concurrency: int,
         transcode_workers: int | None) -> None:
    """Send pydicom's sample files to a local receiver, re-encoded."""
    from engine.demo import run_demo

    configure_logging(0)
    # The summary lists each failed sample once; a log line per failure on
    # top of that would bury the result of a first run.
    logging.getLogger("engine").setLevel(logging.CRITICAL)
    try:
        code = run_demo(transfer_syntax, out_dir, concurrency, transcode_workers)
    except ValueError as exc:
        raise _usage_error(exc) from exc
    sys.exit(code)


if __name__ == "__main__":
    main()
