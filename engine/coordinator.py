"""The coordinator: runs one transfer from the caller's process.

It starts the worker and sender processes, feeds the queues from a thread,
reads every event on the caller's thread, calls the callbacks there, and
keeps the tally. With a Dask scheduler, the files that need re-encoding go
to the cluster instead of local worker processes (``engine.dask_backend``).
Each file gets exactly one outcome, whatever happens to the processes: a
file left without one when the senders stop is reported as failed with the
reason.
"""

from __future__ import annotations

import copyreg
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.connection
import operator
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.association import ContextRequest
from engine.events import (
    AssociationFailed,
    AssociationOpened,
    Event,
    EventType,
    FileFailed,
    FileSending,
    FileStored,
    LogMessage,
    ProcessFinished,
)
from engine.jobs import ReadyFile, TranscodeJob
from engine.logbridge import child_log_level, replay_record
from engine.options import SendOptions
from engine.reports import Report
from engine.s3 import S3Error, S3Source, fetch_to_spool, remove_spooled
from engine.result import FailedFile, SendResult
from engine.sender import MAX_CONTEXTS, SenderSettings, run_sender
from engine.sources import Source
from engine.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

if TYPE_CHECKING:
    from engine.dask_backend import DaskTranscoder
    from engine.journal import Journal

logger = logging.getLogger(__name__)

Callback = Callable[[Exception | None, Event], Any]
READY_BATCH_FILES = 32
READY_BATCH_BYTES = 8 * 1024 * 1024
QUEUE_WAIT_SECONDS = 0.2
SHUTDOWN_SECONDS = 30.0
# How often the shutdown looks at the events queue while processes exit.
EXIT_POLL_SECONDS = 0.01


def pickle_by_fields(cls: type) -> None:
    """Pickle instances of the dataclass ``cls`` as its constructor arguments.

    A frozen, slotted dataclass pickles by default as a list of field values,
    and ``__setstate__`` looks the fields up and sets them one by one. As
    ``cls(*values)`` it takes about a quarter of the time both ways. Work
    items and outcomes cross a queue once per file, so this is a few
    microseconds per file. Registered in this module, it applies to what
    this process pickles and to the processes it forks.
    """
    fields = dataclasses.fields(cls)
    if any(not f.init or f.kw_only for f in fields):
        return
    values = operator.attrgetter(*(f.name for f in fields))
    if len(fields) == 1:
        copyreg.pickle(cls, lambda obj: (cls, (values(obj),)))
    else:
        copyreg.pickle(cls, lambda obj: (cls, values(obj)))


for _message_class in (ReadyFile, TranscodeJob, FileSending, FileStored, FileFailed):
    pickle_by_fields(_message_class)


class OutcomeFlags:
    """The set of job IDs ``0 .. count - 1`` that have an outcome."""

    def __init__(self, count: int) -> None:
        self._flags = bytearray(count)
        self._count = 0

    def add(self, job_id: int) -> None:
        if not self._flags[job_id]:
            self._flags[job_id] = 1
            self._count += 1

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, int) and bool(self._flags[job_id])

    def __len__(self) -> int:
        return self._count


@dataclass(frozen=True)
class Callbacks:
    on_transfer_started: Callback | None = None
    on_file_sending: Callback | None = None
    on_file_sent: Callback | None = None
    on_file_error: Callback | None = None
    on_transfer_completed: Callback | None = None


def plan_contexts(
    sources: Sequence[Source], target_syntax: str | None
) -> tuple[ContextRequest, ...]:
    """Propose a context for each (SOP class, syntax) pair the batch needs.

    The most common pairs come first. Each SOP class also gets Explicit and
    Implicit VR Little Endian contexts, so a refused syntax can fall back
    without a new association, as far as the 128-context limit allows.
    """
    pairs: Counter[tuple[str, str]] = Counter()
    for source in sources:
        assert source.header is not None
        pairs[(source.header.sop_class_uid, wire_syntax(source, target_syntax))] += 1

    requests = [ContextRequest(sop_class, (syntax,))
                for (sop_class, syntax), _ in pairs.most_common()]
    for sop_class in dict.fromkeys(sop_class for sop_class, _ in pairs):
        for syntax in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
            if (sop_class, syntax) not in pairs:
                requests.append(ContextRequest(sop_class, (syntax,)))
    return tuple(requests[:MAX_CONTEXTS])


def wire_syntax(source: Source, target_syntax: str | None) -> str:
    assert source.header is not None
    return target_syntax or source.header.transfer_syntax


def needs_transcoding(source: Source, target_syntax: str | None) -> bool:
    assert source.header is not None
    return target_syntax is not None and source.header.transfer_syntax != target_syntax


class Coordinator:
    """Run one transfer of ``sources`` and return its ``SendResult``."""

    def __init__(
        self,
        options: SendOptions,
        sources: Sequence[Source],
        skipped: Sequence[str],
        callbacks: Callbacks,
        retries: int = 2,
        retry_delay: float = 0.5,
        journal: Journal | None = None,
        already_stored: int = 0,
        report: Report | None = None,
    ) -> None:
        self.options = options
        self.sources = list(sources)
        self.skipped = list(skipped)
        self.callbacks = callbacks
        self.retries = retries
        self.retry_delay = retry_delay
        self.journal = journal
        self.already_stored = already_stored
        self.report = report
        self.spool_dir = ""

        self.sending_reported: set[int] = set()
        # Which files have their outcome: one byte per file, not the events,
        # so the caller's memory does not grow with what the senders report.
        self.outcomes = OutcomeFlags(len(self.sources))
        self.warnings: list[str] = []
        self.failures: list[FailedFile] = []
        self.senders_opened = 0
        self.sender_failures: list[AssociationFailed] = []
        self.finished: Counter[str] = Counter()
        self.stop_feeding = threading.Event()
        self.dask: DaskTranscoder | None = None
        self.feeding_completed = False
        self.interrupted = False
        # Failures found on the feeder thread, recorded on the caller's thread.
        self._late_lock = threading.Lock()
        self._late_events: list[FileFailed] = []
        self.started_at = 0.0

    # The transfer

    def run(self) -> SendResult:
        self.started_at = time.perf_counter()
        total = len(self.sources)
        self._call(self.callbacks.on_transfer_started, EventType.TRANSFER_STARTED,
                   f"Transfer started: {total} files to {self.options.address}",
                   {"total_files": total})

        sendable = self._fail_unreadable()
        if sendable:
            self._run_pipeline(sendable)

        return self._finish()

    def _fail_unreadable(self) -> list[tuple[int, Source]]:
        """Report files whose header could not be read; return the others."""
        sendable = []
        for job_id, source in enumerate(self.sources):
            if source.header is None:
                error = source.error or f"Unable to read '{source.name}'"
                # Workers and senders log their failures; this one fails here.
                logger.error("%s", error)
                self._record(FileFailed(job_id, error))
            else:
                sendable.append((job_id, source))
        return sendable

    def _run_pipeline(self, sendable: list[tuple[int, Source]]) -> None:
        options = self.options
        context = multiprocessing.get_context(options.start_method)
        transcoding = any(needs_transcoding(s, options.transfer_syntax)
                          for _, s in sendable)
        on_dask = transcoding and options.scheduler is not None
        worker_count = options.transcode_workers if transcoding and not on_dask else 0
        spool_dir = self.spool_dir = tempfile.mkdtemp(prefix="dicomsend-spool-")
        log_level = child_log_level(options.verbose)

        jobs_queue = context.Queue(maxsize=max(2, worker_count * 2))
        ready_queue = context.Queue(maxsize=options.concurrency * 2 + 2)
        events_queue = context.Queue()

        if on_dask:
            logger.info(
                "Sending %d files to %s with %d association(s), transcoding on "
                "the Dask cluster at %s", len(sendable), options.address,
                options.concurrency, options.scheduler,
            )
        else:
            logger.info(
                "Sending %d files to %s with %d association(s) and %d transcode "
                "worker(s)", len(sendable), options.address, options.concurrency,
                worker_count,
            )
        sender_settings = SenderSettings(
            options=options,
            contexts=plan_contexts([s for _, s in sendable], options.transfer_syntax),
            retries=self.retries,
            retry_delay=self.retry_delay,
            log_level=log_level,
            report_sending=self.callbacks.on_file_sending is not None,
        )
        senders = [
            context.Process(target=run_sender, name=f"dicomsend-sender-{index}",
                            args=(index, ready_queue, events_queue, sender_settings),
                            daemon=True)
            for index in range(options.concurrency)
        ]
        workers = []
        if worker_count:
            # Imported here because it loads pydicom and the codecs, which a
            # batch without transcoding never needs.
            from engine.worker import WorkerSettings, run_worker

            worker_settings = WorkerSettings(
                target_syntax=str(options.transfer_syntax),
                allow_lossy=options.allow_lossy,
                verify=options.verify,
                spool_dir=spool_dir,
                log_level=log_level,
            )
            workers = [
                context.Process(target=run_worker, name=f"dicomsend-worker-{index}",
                                args=(index, jobs_queue, ready_queue, events_queue,
                                      worker_settings),
                                daemon=True)
                for index in range(worker_count)
            ]

        _start_sharing_memory(senders + workers)
        dask: DaskTranscoder | None = None
        feeder = threading.Thread(
            target=self._feed,
            args=(sendable, jobs_queue, ready_queue, worker_count, spool_dir),
            name="dicomsend-feeder",
            daemon=True,
        )

        try:
            if on_dask:
                # Connected after the processes started, so that none of them
                # is forked from a process running the Dask client's threads.
                dask = self.dask = self._connect_dask(ready_queue, spool_dir)
            feeder.start()
            self._collect_events(events_queue, senders, len(self.sources))
        except KeyboardInterrupt:
            self.interrupted = True
            logger.warning("Interrupted: finishing the files in flight, then "
                           "releasing the associations")
            self.stop_feeding.set()
            _discard_queued(ready_queue)
            _discard_queued(jobs_queue)
        finally:
            self._shut_down(feeder, senders, workers, jobs_queue, ready_queue,
                            events_queue, dask)
            shutil.rmtree(spool_dir, ignore_errors=True)

        self._fail_files_left_over(sendable, senders)

    # Feeding the queues (runs on the feeder thread)

    def _feed(
        self,
        sendable: list[tuple[int, Source]],
        jobs_queue: Any,
        ready_queue: Any,
        worker_count: int,
        spool_dir: str,
    ) -> None:
        target = self.options.transfer_syntax
        batch: list[ReadyFile] = []
        batch_bytes = 0
        # Batches save queue work per file, but a short batch must still be
        # spread over every sender: aim for at least four batches each.
        batch_files = max(1, min(READY_BATCH_FILES,
                                 len(sendable) // (4 * self.options.concurrency)))

        for job_id, source in sendable:
            if self.stop_feeding.is_set():
                return
            header = source.header
            assert header is not None
            path, spooled = self._path_of(job_id, source, spool_dir)
            if path is None:
                continue

            if needs_transcoding(source, target):
                job = TranscodeJob(job_id, source.name, path, header.sop_class_uid,
                                   header.sop_instance_uid, header.transfer_syntax,
                                   str(target))
                if self.dask is not None:
                    if not self._submit_to_dask(job, source):
                        return
                elif not self._put(jobs_queue, [job]):
                    return
                continue

            length = source.size - header.dataset_offset
            batch.append(ReadyFile(
                job_id=job_id, name=source.name, path=path,
                offset=header.dataset_offset, length=length,
                sop_class_uid=header.sop_class_uid,
                sop_instance_uid=header.sop_instance_uid,
                transfer_syntax=header.transfer_syntax,
                file_transfer_syntax=header.transfer_syntax,
                spooled=spooled, source_path=path,
                source_offset=header.dataset_offset, source_size=source.size,
                needs_padding=bool(header.layout and header.layout.odd_length_tags),
            ))
            batch_bytes += length
            # A batch of S3 objects is one object, so few are downloaded ahead.
            if (len(batch) >= batch_files or batch_bytes >= READY_BATCH_BYTES
                    or isinstance(source, S3Source)):
                if not self._put(ready_queue, batch):
                    return
                batch, batch_bytes = [], 0

        if batch and not self._put(ready_queue, batch):
            return
        for _ in range(worker_count):
            if not self._put(jobs_queue, None):
                return
        self.feeding_completed = True

    def _path_of(
        self, job_id: int, source: Source, spool_dir: str
    ) -> tuple[str | None, bool]:
        """Return the path to read ``source`` from, spooling bytes from memory."""
        if isinstance(source, S3Source):
            try:
                return fetch_to_spool(source, spool_dir, job_id), True
            except (S3Error, FileNotFoundError) as exc:
                assert source.header is not None
                self._put_event_later(FileFailed(
                    job_id, str(exc), source.header.sop_instance_uid,
                    source.header.sop_class_uid, source.header.transfer_syntax))
                return None, False
        if source.data is None:
            assert source.path is not None
            return source.path, False
        spool_path = os.path.join(spool_dir, f"{job_id}.memory")
        try:
            with open(spool_path, "wb") as spool_file:
                spool_file.write(source.data)
        except OSError as exc:
            self._put_event_later(FileFailed(
                job_id,
                f"Unable to spool '{source.name}' to '{spool_path}': "
                f"{exc.strerror or exc}; free disk space in the temporary folder",
            ))
            return None, False
        return spool_path, True

    def _connect_dask(self, ready_queue: Any, spool_dir: str) -> DaskTranscoder:
        """Connect to the scheduler; the collector thread feeds ``ready_queue``."""
        from engine.dask_backend import DaskTranscoder, TaskSettings

        options = self.options
        assert options.scheduler is not None
        dask = DaskTranscoder(
            options.scheduler,
            TaskSettings(str(options.transfer_syntax), options.allow_lossy,
                         options.verify),
            spool_dir,
            self.stop_feeding,
            deliver=lambda item: self._put(ready_queue, [item]),
            fail=self._put_event_later,
            connect_timeout=options.timeouts.connect,
        )
        dask.connect()
        return dask

    def _submit_to_dask(self, job: TranscodeJob, source: Source) -> bool:
        """Read the file and start its task; False if the transfer stopped."""
        assert self.dask is not None
        if source.data is not None:
            data = source.data
        else:
            try:
                with open(job.path, "rb") as input_file:
                    data = input_file.read()
            except OSError as exc:
                from engine.worker import read_failure

                failure = read_failure(job, exc)
                logger.error("%s", failure.error)
                self._put_event_later(failure)
                return True
        return self.dask.submit(job, data)

    def _put(self, target_queue: Any, item: Any) -> bool:
        """Put ``item`` unless the transfer is stopping; False if it stopped."""
        while not self.stop_feeding.is_set():
            try:
                target_queue.put(item, timeout=QUEUE_WAIT_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _put_event_later(self, event: FileFailed) -> None:
        with self._late_lock:
            self._late_events.append(event)

    # Reading events (runs on the caller's thread)

    def _collect_events(self, events_queue: Any, senders: list[Any], total: int) -> None:
        while len(self.outcomes) < total:
            self._take_late_events()
            try:
                message = events_queue.get(timeout=QUEUE_WAIT_SECONDS)
            except queue.Empty:
                if self._senders_gone(senders):
                    return
                continue
            self._handle(message)
            self._raise_if_no_association(len(senders))
            if self.finished["sender"] == len(senders):
                self._drain(events_queue)
                return

    def _take_late_events(self) -> None:
        with self._late_lock:
            late, self._late_events[:] = list(self._late_events), []
        for event in late:
            self._record(event)

    def _senders_gone(self, senders: list[Any]) -> bool:
        return all(not process.is_alive() for process in senders)

    def _drain(self, events_queue: Any) -> None:
        while True:
            try:
                self._handle(events_queue.get(timeout=0.05))
            except queue.Empty:
                return

    def _drain_now(self, events_queue: Any) -> None:
        """Handle every event already in the queue, without waiting for more."""
        while True:
            try:
                self._handle(events_queue.get_nowait())
            except queue.Empty:
                return

    def _handle(self, message: Any) -> None:
        if isinstance(message, list):
            for item in message:
                # Outcomes are most of the traffic; take them first.
                if type(item) is FileStored:
                    self._record(item)
                else:
                    self._handle(item)
        elif isinstance(message, LogMessage):
            replay_record(message)
        elif isinstance(message, FileSending):
            self._report_sending(message.job_id, message.sop_instance_uid,
                                 message.sop_class_uid)
        elif isinstance(message, (FileStored, FileFailed)):
            self._record(message)
        elif isinstance(message, AssociationOpened):
            self.senders_opened += 1
        elif isinstance(message, AssociationFailed):
            self.sender_failures.append(message)
        elif isinstance(message, ProcessFinished):
            self.finished[message.role] += 1

    def _raise_if_no_association(self, sender_count: int) -> None:
        if self.senders_opened or len(self.sender_failures) < sender_count:
            return
        failure = self.sender_failures[0]
        error_class = getattr(errors, failure.error_type, errors.AssociationError)
        if error_class is errors.AssociationRejectedError:
            raise errors.AssociationRejectedError(
                failure.message, failure.result, failure.source, failure.reason
            )
        raise error_class(failure.message)

    # The tally

    def _report_sending(
        self, job_id: int, sop_instance_uid: str | None, sop_class_uid: str | None
    ) -> None:
        if self.callbacks.on_file_sending is None or job_id in self.sending_reported:
            return
        self.sending_reported.add(job_id)
        source = self.sources[job_id]
        self._call(self.callbacks.on_file_sending, EventType.FILE_SENDING,
                   f"Sending {source.name}",
                   {"file": source.name, "sop_instance_uid": sop_instance_uid,
                    "sop_class_uid": sop_class_uid})

    def _record(self, outcome: FileStored | FileFailed) -> None:
        """Record a file's one outcome and call its callback; repeats are ignored."""
        if outcome.job_id in self.outcomes:
            logger.debug("Ignoring a second outcome for file %d", outcome.job_id)
            return
        self._report_sending(outcome.job_id, outcome.sop_instance_uid,
                             outcome.sop_class_uid)
        self.outcomes.add(outcome.job_id)
        source = self.sources[outcome.job_id]
        name = source.name
        if self.report is not None:
            self.report.add(source, outcome)
        if isinstance(source, S3Source):
            remove_spooled(self.spool_dir, outcome.job_id)
        if self.journal is not None and source.path is not None:
            self.journal.record(source.path, outcome.sop_instance_uid,
                                isinstance(outcome, FileStored),
                                getattr(outcome, "error", None))

        if isinstance(outcome, FileStored):
            if outcome.warning:
                self.warnings.append(outcome.warning)
            if self.callbacks.on_file_sent is None:
                return
            self._call(self.callbacks.on_file_sent, EventType.FILE_SENT,
                       f"Sent {name}",
                       {"file": name, "sop_instance_uid": outcome.sop_instance_uid,
                        "sop_class_uid": outcome.sop_class_uid,
                        "transfer_syntax": outcome.transfer_syntax,
                        "duration_seconds": outcome.duration_seconds})
            return

        self.failures.append(FailedFile(name, outcome.error))
        data: dict[str, Any] = {"file": name, "error": outcome.error}
        for key in ("sop_instance_uid", "sop_class_uid", "file_transfer_syntax"):
            value = getattr(outcome, key)
            if value is not None:
                data[key] = value
        self._call(self.callbacks.on_file_error, EventType.FILE_ERROR,
                   f"Failed to send {name}", data)

    def _fail_files_left_over(
        self, sendable: list[tuple[int, Source]], senders: list[Any]
    ) -> None:
        """Give every file without an outcome a failure that states why."""
        self._take_late_events()
        if len(self.outcomes) == len(self.sources):
            return
        missing = [job_id for job_id, _ in sendable if job_id not in self.outcomes]
        if not missing:
            return

        if self.interrupted:
            reason = "the transfer was interrupted first"
        elif self.sender_failures:
            reason = (f"every association with {self.options.address} was lost or "
                      f"stopped answering ({self.sender_failures[-1].message})")
        else:
            codes = ", ".join(str(p.exitcode) for p in senders)
            reason = (f"the sender processes stopped unexpectedly (exit codes {codes})")
        logger.error("%d files were not sent because %s", len(missing), reason)
        for job_id in missing:
            source = self.sources[job_id]
            assert source.header is not None
            self._record(FileFailed(
                job_id,
                f"Unable to send '{source.name}' because {reason}; send it again",
                sop_instance_uid=source.header.sop_instance_uid,
                sop_class_uid=source.header.sop_class_uid,
                file_transfer_syntax=source.header.transfer_syntax,
            ))

    def _finish(self) -> SendResult:
        duration = time.perf_counter() - self.started_at
        total = len(self.sources)
        failed = len(self.failures)
        successful = len(self.outcomes) - failed
        logger.info(
            "Stored %d of %d files (%d failed, %d with warnings) in %.2f s",
            successful, total, failed, len(self.warnings), duration,
        )
        self._call(self.callbacks.on_transfer_completed, EventType.TRANSFER_COMPLETED,
                   f"Transfer completed: {successful} of {total} files stored, "
                   f"{failed} failed",
                   {"total_files": total, "successful": successful, "failed": failed,
                    "duration_seconds": duration})
        return SendResult(
            successful=successful,
            failed=failed,
            warnings=tuple(self.warnings),
            total_files=total,
            skipped=len(self.skipped),
            duration_seconds=duration,
            failures=tuple(self.failures),
            skipped_files=tuple(self.skipped),
            interrupted=self.interrupted,
            already_stored=self.already_stored,
        )

    def _call(
        self,
        callback: Callback | None,
        event_type: EventType,
        message: str,
        data: dict[str, Any],
    ) -> None:
        if callback is None:
            return
        try:
            callback(None, Event(event_type, message, data))
        except Exception:  # noqa: BLE001 - a callback must not stop the batch
            logger.exception(
                "The %s callback raised an exception; the transfer goes on",
                event_type.value,
            )

    # Shutdown

    def _shut_down(
        self,
        feeder: threading.Thread,
        senders: list[Any],
        workers: list[Any],
        jobs_queue: Any,
        ready_queue: Any,
        events_queue: Any,
        dask: DaskTranscoder | None = None,
    ) -> None:
        """Stop feeding, tell every process to stop, and wait for them."""
        self.stop_feeding.set()
        if feeder.ident is not None:
            feeder.join()
        if dask is not None:
            dask.close()

        for _ in senders:
            _put_nowait(ready_queue, None)
        if not self.feeding_completed:
            for _ in workers:
                _put_nowait(jobs_queue, None)

        deadline = time.monotonic() + SHUTDOWN_SECONDS
        processes = senders + workers
        # Handle events while waiting for the processes to exit: a process
        # cannot exit while its last events are stuck in a full pipe. Waking
        # on the sentinels ends the wait as soon as the last one is gone.
        running = [p for p in processes if p.is_alive()]
        while running and time.monotonic() < deadline:
            self._drain_now(events_queue)
            multiprocessing.connection.wait(
                [p.sentinel for p in running], timeout=EXIT_POLL_SECONDS)
            running = [p for p in running if p.is_alive()]
        for process in processes:
            if process.is_alive():
                logger.warning("Stopping %s, which did not stop by itself",
                               process.name)
                process.terminate()
            process.join(timeout=5)
        # Every process has exited, so whatever it put is in the pipe already.
        self._drain_now(events_queue)
        for managed_queue in (jobs_queue, ready_queue, events_queue):
            managed_queue.close()
            managed_queue.cancel_join_thread()


def _start_sharing_memory(processes: list[Any]) -> None:
    """Start ``processes`` so that they keep sharing the caller's memory.

    A forked child shares the caller's pages until one is written. Python's
    cyclic garbage collector writes to the header of every object it scans,
    so a collection in a child would copy every page that contains the batch's
    file list: memory that grows with the number of files, once per child.
    Objects frozen before the fork are never scanned, in the child or here,
    so they stay shared. A caller that uses ``gc.freeze`` itself is left
    alone.
    """
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        for process in processes:
            process.start()
    finally:
        if freeze:
            gc.unfreeze()


def _discard_queued(target_queue: Any) -> None:
    """Take back what no process has started on; those files are not sent."""
    while True:
        try:
            target_queue.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return


def _put_nowait(target_queue: Any, item: Any) -> None:
    try:
        target_queue.put(item, timeout=1.0)
    except queue.Full:
        pass
