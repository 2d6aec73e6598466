"""Transcode worker processes: read a file, re-encode it, spool the result.

A worker owns a file from the moment it takes the job until it has put the
re-encoded data set in the spool folder and the ready queue, or reported
why it could not. ``encode_job`` and ``spool_encoded`` are the two halves
of that work. The Dask backend (``engine.dask_backend``) runs the first on
a cluster and the second in the caller's process.
"""

from __future__ import annotations

import io
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

import pydicom

from engine.events import FileFailed, ProcessFinished
from engine.jobs import ReadyFile, TranscodeJob
from engine.lifetime import stop_with_parent
from engine.logbridge import install_child_logging
from transcode.errors import TranscodeError
from transcode.transcoder import Transcoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    target_syntax: str
    allow_lossy: bool
    verify: bool
    spool_dir: str
    log_level: int


def run_worker(
    worker_id: int,
    jobs_queue: Any,
    ready_queue: Any,
    events_queue: Any,
    settings: WorkerSettings,
) -> None:
    """Process transcode jobs until the coordinator sends ``None``."""
    install_child_logging(events_queue, settings.log_level)
    # Ctrl-C reaches every process of the terminal; the coordinator decides
    # what stops, and this process finishes its file first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent()
    transcoder = Transcoder(
        settings.target_syntax, allow_lossy=settings.allow_lossy, verify=settings.verify
    )

    while True:
        batch = jobs_queue.get()
        if batch is None:
            break
        for job in batch:
            outcome = transcode_job(job, transcoder, settings.spool_dir)
            if isinstance(outcome, ReadyFile):
                ready_queue.put([outcome])
            else:
                events_queue.put(outcome)

    events_queue.put(ProcessFinished("worker", worker_id))


@dataclass(frozen=True, slots=True)
class EncodedDataset:
    """A re-encoded data set as it goes on the wire, without file meta."""

    job_id: int
    data: bytes
    sop_instance_uid: str
    transfer_syntax: str


def transcode_job(
    job: TranscodeJob, transcoder: Transcoder, spool_dir: str
) -> ReadyFile | FileFailed:
    """Re-encode one file into the spool folder, or say why it failed."""
    encoded = encode_job(job, transcoder, job.path)
    if isinstance(encoded, FileFailed):
        logger.error("%s", encoded.error)
        return encoded
    outcome = spool_encoded(job, encoded, spool_dir)
    if isinstance(outcome, FileFailed):
        logger.error("%s", outcome.error)
    return outcome


def encode_job(
    job: TranscodeJob, transcoder: Transcoder, source: str | bytes
) -> EncodedDataset | FileFailed:
    """Re-encode the file at the path ``source``, or given as its bytes.

    Every failure becomes a ``FileFailed`` whose message names the file and
    the reason. Nothing is logged here, because the caller decides where
    the message is logged.
    """
    try:
        readable = io.BytesIO(source) if isinstance(source, bytes) else source
        dataset = pydicom.dcmread(readable, force=True)
        _fill_missing_transfer_syntax(dataset, job.file_transfer_syntax)
        result = transcoder.transcode(dataset)
        data = result.dataset_bytes()
    except TranscodeError as exc:
        return failed_job(job, f"Unable to transcode '{job.name}': {exc}")
    except OSError as exc:
        return read_failure(job, exc)
    except Exception as exc:
        # pydicom and the codecs raise many exception types on damaged
        # input; whatever it is, it fails this file and the worker goes on.
        logger.debug("Transcoding '%s' failed", job.name, exc_info=True)
        return failed_job(
            job,
            f"Unable to transcode '{job.name}' to "
            f"{pydicom.uid.UID(job.target_syntax).name}: the file could not be "
            f"decoded ({type(exc).__name__}: {exc}); send it without "
            "--transfer-syntax or repair the file",
        )

    return EncodedDataset(
        job_id=job.job_id,
        data=data,
        # A data set without (0008,0018) keeps the UID its file meta gave.
        sop_instance_uid=str(result.sop_instance_uid or job.sop_instance_uid),
        transfer_syntax=str(result.transfer_syntax),
    )


def read_failure(job: TranscodeJob, exc: OSError) -> FileFailed:
    """Return the failure of a file that could not be read."""
    return failed_job(
        job,
        f"Unable to read '{job.name}': {exc.strerror or exc}; check that the "
        "file still exists and is readable",
    )


def spool_encoded(
    job: TranscodeJob, encoded: EncodedDataset, spool_dir: str
) -> ReadyFile | FileFailed:
    """Write a re-encoded data set to the spool folder and describe it for a sender."""
    spool_path = os.path.join(spool_dir, f"{job.job_id}.transcoded")
    try:
        with open(spool_path, "wb") as spool_file:
            spool_file.write(encoded.data)
    except OSError as exc:
        _remove_quietly(spool_path)
        return failed_job(
            job,
            f"Unable to spool the transcoded '{job.name}' to '{spool_path}': "
            f"{exc.strerror or exc}; free disk space in the temporary folder",
        )

    logger.debug(
        "Transcoded '%s' from %s to %s (%d bytes)",
        job.name,
        pydicom.uid.UID(job.file_transfer_syntax).name,
        pydicom.uid.UID(encoded.transfer_syntax).name,
        len(encoded.data),
    )
    return ReadyFile(
        job_id=job.job_id,
        name=job.name,
        path=spool_path,
        offset=0,
        length=len(encoded.data),
        sop_class_uid=job.sop_class_uid,
        sop_instance_uid=encoded.sop_instance_uid,
        transfer_syntax=encoded.transfer_syntax,
        file_transfer_syntax=job.file_transfer_syntax,
        spooled=True,
        source_path=job.path,
        source_offset=0,
        source_size=0,
    )


def _fill_missing_transfer_syntax(dataset: pydicom.Dataset, syntax: str) -> None:
    """Give a file without file meta the syntax its header was read in."""
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = syntax


def failed_job(job: TranscodeJob, message: str) -> FileFailed:
    return FileFailed(
        job.job_id,
        message,
        sop_instance_uid=job.sop_instance_uid,
        sop_class_uid=job.sop_class_uid,
        file_transfer_syntax=job.file_transfer_syntax,
    )


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
