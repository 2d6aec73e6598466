"""``StoreScu``: the public entry point for sending files to a receiver."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from engine.coordinator import Callback, Callbacks, Coordinator
from engine.journal import Journal
from engine.options import (
    DEFAULT_CALLED_AE_TITLE,
    DEFAULT_CALLING_AE_TITLE,
    DEFAULT_MAX_PDU_LENGTH,
    SendOptions,
    Timeouts,
    default_transcode_workers,
    parse_address,
    validate_ae_title,
    validate_count,
    validate_max_pdu_length,
    validate_timeout,
)
from engine.commitment import validate_listen_port
from engine.reports import Report, report_format
from engine.result import SendResult
from engine.tls import validate_tls
from engine.s3 import S3Settings, is_s3_url, s3_source, s3_sources
from engine.sources import (
    SkippedFile,
    Source,
    source_from_memory,
    source_from_path,
    sources_from_directory,
)

logger = logging.getLogger(__name__)

START_METHODS = ("fork", "spawn", "forkserver")
MAX_RETRIES = 100


def _reject_lossy_target(transfer_syntax: str) -> None:
    """Raise ValueError for a lossy target when lossy output was not allowed."""
    from transcode.syntaxes import get_syntax_info

    info = get_syntax_info(transfer_syntax)
    if info.lossy:
        raise ValueError(
            f"Invalid transfer_syntax {info.keyword}: it is lossy, so it needs "
            "allow_lossy=True (--allow-lossy on the command line); choose a "
            "lossless syntax such as JPEG2000Lossless otherwise"
        )


class StoreScu:
    """Send DICOM files to a storage SCP over one or more associations.

    Parameters
    ----------
    addr : str
        The receiver: ``host:port``, ``host`` (port 104) or ``[ipv6]:port``.
    calling_ae_title : str
        Our AE title, 1 to 16 characters. Default ``STORE-SCU``.
    called_ae_title : str
        The receiver's AE title, 1 to 16 characters. Default ``ANY-SCP``.
    max_pdu_length : int
        The largest PDU we accept, 4096 to 131072 bytes. Default 16384.
    verbose : bool
        Log the protocol conversation at INFO: connections, accepted
        presentation contexts, each file and each response.
    transfer_syntax : str or None
        Send every file in this transfer syntax (a UID, or a keyword such as
        ``ExplicitVRLittleEndian`` or ``JPEG2000Lossless``). None sends each
        file in its own syntax.
    concurrency : int
        Number of sender processes, each with one association. Default 1.
    transcode_workers : int or None
        Number of processes that re-encode pixel data. Default: the number
        of CPUs. They are only started when a file needs re-encoding.
    allow_lossy : bool
        Permit a lossy ``transfer_syntax``; without it such a target fails
        every file that would need it.
    verify : bool
        Decode each losslessly re-encoded file and compare its pixels with
        the source before sending it.
    retries : int
        How many times a file is sent again after the association broke
        (abort, timeout, reset). Default 2.
    connect_timeout, acse_timeout, dimse_timeout, network_timeout : float or None
        Timeouts in seconds; None waits forever.
    start_method : str or None
        The multiprocessing start method: ``fork``, ``spawn`` or
        ``forkserver``. None uses the platform default.
    tls : bool
        Secure every association with TLS (DICOM TLS). Giving any of the
        files below turns it on too.
    tls_ca_file : str or path-like or None
        PEM certificates that may sign the receiver's; default: the system's.
    tls_cert_file, tls_key_file : str or path-like or None
        Our PEM certificate and its private key (without a password).
    tls_verify : bool
        Check the receiver's certificate and host name. Default True.
    journal : str or path-like or None
        An SQLite file recording each file's outcome. A later ``send`` with
        the same journal leaves out the files it shows as stored, so a batch
        stopped by a crash or Ctrl-C resumes where it was.
    report : str or path-like or None
        Write one record per file to this ``.jsonl`` or ``.csv`` file as
        files finish. ``SendResult.records`` has the records either way.
    commit : bool
        After sending, ask the receiver to commit the stored instances
        (Storage Commitment Push Model); those it does not commit count as
        failed, with the reason.
    commit_listen_port : int or None
        Listen on this port for a commitment report sent on a new
        association. None waits for it on the N-ACTION's association only.
    commit_timeout : float
        Seconds to wait for the commitment report. Default 60.
    s3_endpoint_url : str or None
        The S3 endpoint for ``s3://`` sources. None uses boto3's choice
        (``AWS_ENDPOINT_URL_S3``, the profile, or AWS).
    scheduler : str or None
        A ``dask.distributed`` scheduler, ``tcp://host:port``, whose workers
        re-encode the files instead of ``transcode_workers`` local
        processes. The senders stay in this machine's processes. The file
        bytes travel with the tasks, so the workers need no access to the
        files; they need dicomsend installed. See ``docs/dask.md``.

    Raises
    ------
    ValueError
        If an option is invalid; the message names the option and the value.
    ImportError
        If ``scheduler`` is given and ``dask.distributed`` is not installed.
    """

    def __init__(
        self,
        addr: str,
        *,
        calling_ae_title: str = DEFAULT_CALLING_AE_TITLE,
        called_ae_title: str = DEFAULT_CALLED_AE_TITLE,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        verbose: bool = False,
        transfer_syntax: str | None = None,
        concurrency: int = 1,
        transcode_workers: int | None = None,
        allow_lossy: bool = False,
        verify: bool = False,
        retries: int = 2,
        connect_timeout: float | None = 30.0,
        acse_timeout: float | None = 30.0,
        dimse_timeout: float | None = 60.0,
        network_timeout: float | None = 60.0,
        start_method: str | None = None,
        journal: str | os.PathLike[str] | None = None,
        tls: bool = False,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        tls_verify: bool = True,
        report: str | os.PathLike[str] | None = None,
        commit: bool = False,
        commit_listen_port: int | None = None,
        commit_timeout: float = 60.0,
        s3_endpoint_url: str | None = None,
        scheduler: str | None = None,
    ) -> None:
        if transfer_syntax is not None:
            from transcode.syntaxes import resolve_transfer_syntax

            transfer_syntax = str(resolve_transfer_syntax(transfer_syntax))
        if transcode_workers is None:
            transcode_workers = default_transcode_workers()
        if start_method is not None and start_method not in START_METHODS:
            raise ValueError(
                f"Invalid start_method {start_method!r}: expected one of "
                f"{', '.join(START_METHODS)} or None"
            )
        if (isinstance(retries, bool) or not isinstance(retries, int)
                or not 0 <= retries <= MAX_RETRIES):
            raise ValueError(
                f"Invalid retries {retries!r}: expected a whole number from 0 to "
                f"{MAX_RETRIES}"
            )
        if transfer_syntax is not None and not allow_lossy:
            _reject_lossy_target(transfer_syntax)
        if scheduler is not None:
            from engine.dask_backend import (
                require_distributed,
                validate_scheduler_address,
            )

            scheduler = validate_scheduler_address(scheduler)
            require_distributed()
        if journal is not None:
            # Open it once now, so a bad path fails here and not mid-send.
            Journal(journal).close()

        self.options = SendOptions(
            address=parse_address(addr),
            calling_ae_title=validate_ae_title("calling_ae_title", calling_ae_title),
            called_ae_title=validate_ae_title("called_ae_title", called_ae_title),
            max_pdu_length=validate_max_pdu_length(max_pdu_length),
            transfer_syntax=transfer_syntax,
            concurrency=validate_count("concurrency", concurrency),
            transcode_workers=validate_count("transcode_workers", transcode_workers),
            verbose=bool(verbose),
            allow_lossy=bool(allow_lossy),
            verify=bool(verify),
            timeouts=Timeouts(
                connect=validate_timeout("connect_timeout", connect_timeout),
                acse=validate_timeout("acse_timeout", acse_timeout),
                dimse=validate_timeout("dimse_timeout", dimse_timeout),
                network=validate_timeout("network_timeout", network_timeout),
            ),
            start_method=start_method,
            tls=validate_tls(tls, tls_ca_file, tls_cert_file, tls_key_file,
                             tls_verify),
            scheduler=scheduler,
        )
        self.retries = retries
        self.journal_path = os.fspath(journal) if journal is not None else None
        if report is not None:
            report_format(report)
        self.report_path = report
        self.commit = bool(commit)
        self.commit_listen_port = validate_listen_port("commit_listen_port",
                                                       commit_listen_port)
        self.commit_timeout = validate_timeout("commit_timeout", commit_timeout) or 60.0
        self.s3_settings = S3Settings(endpoint_url=s3_endpoint_url)
        self._sources: list[Source] = []
        self._skipped: list[SkippedFile] = []
        self._seen_paths: set[str] = set()

    # Adding files

    def add_file(self, path: str | os.PathLike[str]) -> None:
        """Queue one file. A file that is not DICOM fails when sent, with the reason.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        IsADirectoryError
            If ``path`` is a directory.
        """
        if self._already_queued(path):
            return
        if is_s3_url(path):
            self._keep(s3_source(str(path), self.s3_settings))
            return
        self._keep(source_from_path(path))

    def add_directory(self, path: str | os.PathLike[str]) -> None:
        """Queue every DICOM file below ``path``, recursively.

        Files that are not DICOM and DICOMDIR files are skipped and counted
        in ``SendResult.skipped``.

        Raises
        ------
        FileNotFoundError, NotADirectoryError
            If ``path`` does not exist or is not a directory.
        """
        real_folders: dict[str, str] = {}
        if is_s3_url(path):
            for item in s3_sources(str(path), self.s3_settings):
                if isinstance(item, Source) and self._already_queued(item.name):
                    continue
                self._keep(item)
            return
        for found in sources_from_directory(path):
            if isinstance(found, Source) and self._already_queued(
                    found.name, _real_path_in_walk(found.name, real_folders)):
                continue
            self._keep(found)

    def add_file_from_memory(self, data: bytes, name: str) -> None:
        """Queue a DICOM file held in memory; events report it as ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"Invalid name {name!r}: expected a non-empty string")
        self._keep(source_from_memory(data, name))

    def clean(self) -> None:
        """Empty the queue, so the object can be reused for another batch."""
        self._sources.clear()
        self._skipped.clear()
        self._seen_paths.clear()

    @property
    def queued_files(self) -> int:
        return len(self._sources)

    @property
    def skipped_files(self) -> list[SkippedFile]:
        return list(self._skipped)

    def _already_queued(
        self, path: str | os.PathLike[str], real_path: str | None = None
    ) -> bool:
        name = os.fspath(path)
        key = real_path or (name if is_s3_url(name) else os.path.realpath(name))
        if key in self._seen_paths:
            logger.info("'%s' is already queued; it is sent once", os.fspath(path))
            return True
        self._seen_paths.add(key)
        return False

    def _keep(self, found: Source | SkippedFile) -> None:
        if isinstance(found, SkippedFile):
            logger.info("Skipping '%s': %s", found.path, found.reason)
            self._skipped.append(found)
        else:
            self._sources.append(found)

    # Sending

    def send(
        self,
        *,
        on_transfer_started: Callback | None = None,
        on_file_sending: Callback | None = None,
        on_file_sent: Callback | None = None,
        on_file_error: Callback | None = None,
        on_transfer_completed: Callback | None = None,
    ) -> SendResult:
        """Send every queued file and return what happened to each.

        Callbacks are called as ``callback(err, event)`` in this process, with
        ``err`` None and ``event.message`` and ``event.data`` describing it.

        Raises
        ------
        ConnectionFailedError
            If no association could be opened (nothing listening, timeout).
        AssociationRejectedError
            If the receiver rejected every association; the message gives
            its reason.
        DaskSchedulerError
            If files need re-encoding, ``scheduler`` is set, and the scheduler
            cannot be reached or has no workers; the message names its address.
        """
        callbacks = Callbacks(
            on_transfer_started=on_transfer_started,
            on_file_sending=on_file_sending,
            on_file_sent=on_file_sent,
            on_file_error=on_file_error,
            on_transfer_completed=on_transfer_completed,
        )
        journal = Journal(self.journal_path) if self.journal_path else None
        report = Report(self.report_path,
                        keep_records=self.report_path is not None or self.commit)
        try:
            sources = self._sources
            already_stored = 0
            if journal is not None:
                sources = [source for source in self._sources
                           if source.path is None or not journal.was_stored(source.path)]
                already_stored = len(self._sources) - len(sources)
                if already_stored:
                    logger.info("Leaving out %d files the journal '%s' shows as "
                                "stored", already_stored, self.journal_path)
            with _verbose_output(self.options.verbose):
                coordinator = Coordinator(
                    self.options,
                    sources,
                    [skipped.path for skipped in self._skipped],
                    callbacks,
                    retries=self.retries,
                    journal=journal,
                    already_stored=already_stored,
                    report=report,
                )
                result = coordinator.run()
                if self.commit and not result.interrupted:
                    from engine.commitment import commit_stored_files

                    result = commit_stored_files(
                        result, report, self.options, self.commit_listen_port,
                        self.commit_timeout)
            return dataclasses.replace(result, records=tuple(report.records))
        finally:
            report.close()
            if journal is not None:
                journal.close()


def _real_path_in_walk(path: str, real_folders: dict[str, str]) -> str:
    """Return ``os.path.realpath(path)`` for a file found by walking a folder.

    ``os.path.realpath`` looks at every component of the path. The folders of
    a walk repeat, so their resolved paths are kept in ``real_folders`` and
    only the file's own name is looked at. A symbolic link is resolved in
    full, and any other name is joined to its resolved folder.
    """
    folder, file_name = os.path.split(path)
    if os.path.islink(path):
        return os.path.realpath(path)
    real_folder = real_folders.get(folder)
    if real_folder is None:
        real_folder = real_folders[folder] = os.path.realpath(folder)
    if real_folder == folder:
        return path  # already real: keep no second copy of the string
    return os.path.join(real_folder, file_name)


class _verbose_output:
    """Show INFO records on stderr while sending, if nothing else shows them."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.handler: logging.Handler | None = None
        self.previous_level = logging.NOTSET

    def __enter__(self) -> None:
        project = logging.getLogger("engine")
        has_output = logging.getLogger().handlers or any(
            not isinstance(handler, logging.NullHandler) for handler in project.handlers
        )
        if not self.verbose or has_output:
            if self.verbose and project.getEffectiveLevel() > logging.INFO:
                self.previous_level = project.level
                project.setLevel(logging.INFO)
            return
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        self.previous_level = project.level
        project.addHandler(self.handler)
        project.setLevel(logging.INFO)

    def __exit__(self, *exc_info: object) -> None:
        project = logging.getLogger("engine")
        if self.handler is not None:
            project.removeHandler(self.handler)
        if self.previous_level != logging.NOTSET or self.handler is not None:
            project.setLevel(self.previous_level)
