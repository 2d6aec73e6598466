"""Transcoding on a ``dask.distributed`` cluster instead of local processes.

With the ``scheduler`` option, the coordinator sends each file that needs
re-encoding to the cluster as one task and keeps everything else local:

- the feeder thread reads the file's bytes and submits them with the task,
  because a Dask worker may be on another machine and cannot be assumed to
  see the caller's files, spool folder or memory;
- the task (``transcode_task``) decodes and re-encodes the data set and
  returns its bytes, its SOP Instance UID and its transfer syntax, or the
  failure message a local worker would give;
- a collector thread in the caller's process writes the bytes to the local
  spool folder and puts the ``ReadyFile`` on the ready queue, where the
  local sender processes take it as they take a local worker's output.

At most ``IN_FLIGHT_PER_THREAD`` tasks per Dask worker thread are submitted
and not yet collected, so the memory of the caller and of the cluster does
not grow with the number of files. A task is a pure function of its input,
so when Dask runs it again after a worker was lost, the file still gets one
outcome.

Every Dask worker needs dicomsend (the same version) and its codecs
installed, because the task refers to this module by name.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from engine.errors import DicomSendError
from engine.events import FileFailed
from engine.jobs import ReadyFile, TranscodeJob
from engine.options import parse_address

if TYPE_CHECKING:
    from engine.worker import EncodedDataset
    from transcode.transcoder import Transcoder

# Imports of pydicom, the codecs and the Dask client wait until a task runs
# or a client connects, so the command line loads this module cheaply.

logger = logging.getLogger(__name__)

IN_FLIGHT_PER_THREAD = 2
MIN_IN_FLIGHT = 2
# How often the collector thread looks at the stop flag and the workers.
WAIT_SECONDS = 0.2
WORKER_CHECK_SECONDS = 2.0
DEFAULT_CONNECT_SECONDS = 30.0
CLOSE_SECONDS = 10.0


class DaskSchedulerError(DicomSendError):
    """The Dask scheduler could not be reached, or its cluster has no workers."""


def validate_scheduler_address(value: object) -> str | None:
    """Return the scheduler address as ``tcp://host:port``, or raise ValueError.

    ``host:port`` without a scheme means TCP. Only TCP is accepted, because
    no option passes the certificates a ``tls://`` scheduler needs.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"Invalid scheduler {value!r}: expected 'tcp://host:port', or None to "
            "transcode in local processes"
        )
    text = value.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "tcp", text
    if scheme.lower() != "tcp":
        raise ValueError(
            f"Invalid scheduler {value!r}: only tcp:// schedulers are supported, "
            f"not {scheme}://"
        )

    try:
        address = parse_address(rest)
    except ValueError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise ValueError(f"Invalid scheduler {value!r}: {reason}") from None
    has_port = "]:" in rest if rest.startswith("[") else rest.count(":") == 1
    if not has_port:
        raise ValueError(
            f"Invalid scheduler {value!r}: the port is missing; expected "
            "'tcp://host:port' (a Dask scheduler listens on 8786 by default)"
        )
    return f"tcp://{address}"


def require_distributed() -> None:
    """Raise ImportError unless ``dask.distributed`` can be imported."""
    if importlib.util.find_spec("distributed") is None:
        raise ImportError(
            "The scheduler option needs dask.distributed, which is not installed; "
            "install it with pip install 'dicomsend[dask]'"
        )


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """The target syntax and checks that a transcode task applies to its file."""

    target_syntax: str
    allow_lossy: bool
    verify: bool


_thread_state = threading.local()


def transcode_task(
    job: TranscodeJob, data: bytes, settings: TaskSettings
) -> EncodedDataset | FileFailed:
    """Re-encode one file given as its bytes; runs on a Dask worker.

    Parameters
    ----------
    job : TranscodeJob
        The file: its name for messages, its UIDs and the target syntax.
        ``job.path`` is the caller's path and is not read here.
    data : bytes
        The whole file as the caller read it, file meta included if it has one.
    settings : TaskSettings
        The target syntax and whether lossy output and verification are on.

    Returns
    -------
    EncodedDataset or FileFailed
        The data set as it goes on the wire, or the same failure a local
        worker would report for this file.
    """
    from engine.worker import encode_job

    return encode_job(job, _transcoder_for(settings), data)


def _transcoder_for(settings: TaskSettings) -> Transcoder:
    """Return this thread's transcoder for ``settings``, built once.

    A Dask worker may run several tasks at once on threads, and nothing
    promises that a ``Transcoder`` may be shared between threads.
    """
    cache: dict[TaskSettings, Transcoder] | None = getattr(
        _thread_state, "transcoders", None)
    if cache is None:
        cache = _thread_state.transcoders = {}
    transcoder = cache.get(settings)
    if transcoder is None:
        from transcode.transcoder import Transcoder

        transcoder = cache[settings] = Transcoder(
            settings.target_syntax, allow_lossy=settings.allow_lossy,
            verify=settings.verify)
    return transcoder


@dataclass(frozen=True, slots=True)
class _Running:
    job: TranscodeJob
    future: Any


class DaskTranscoder:
    """Run a batch's transcode jobs as tasks on a ``dask.distributed`` cluster.

    Parameters
    ----------
    address : str
        The scheduler, such as ``tcp://10.0.0.5:8786``.
    settings : TaskSettings
        The target syntax and its checks, the same for every task.
    spool_dir : str
        The caller's spool folder, where re-encoded data sets are written.
    stop : threading.Event
        Set by the coordinator when the transfer stops; ``submit`` and the
        collector thread return soon after.
    deliver : callable
        Called with each ``ReadyFile`` on the collector thread; returns False
        when the transfer is stopping and the file was not taken.
    fail : callable
        Called with each ``FileFailed`` on the collector thread.
    connect_timeout : float or None
        Seconds to wait for the scheduler, and for its first worker. None
        waits 30 s for the scheduler and forever for the first worker.
    no_workers_timeout : float
        Seconds the cluster may have no workers while tasks wait, before the
        waiting files fail. Dask itself keeps such tasks until a worker
        joins, which would stop the batch for good.
    """

    def __init__(
        self,
        address: str,
        settings: TaskSettings,
        spool_dir: str,
        stop: threading.Event,
        deliver: Callable[[ReadyFile], bool],
        fail: Callable[[FileFailed], None],
        connect_timeout: float | None = DEFAULT_CONNECT_SECONDS,
        no_workers_timeout: float = DEFAULT_CONNECT_SECONDS,
    ) -> None:
        self.address = address
        self.settings = settings
        self.spool_dir = spool_dir
        self.stop = stop
        self.deliver = deliver
        self.fail = fail
        self.connect_timeout = connect_timeout
        self.no_workers_timeout = no_workers_timeout
        self.client: Any = None
        self.max_in_flight = MIN_IN_FLIGHT
        # Tasks submitted, and the largest number submitted and not yet
        # collected at one time, for the log and for tests.
        self.submitted = 0
        self.peak_in_flight = 0
        self._slots = threading.BoundedSemaphore(MIN_IN_FLIGHT)
        self._done: queue.Queue[_Running] = queue.Queue()
        self._running: dict[int, _Running] = {}
        self._running_lock = threading.Lock()
        self._broken: str | None = None
        # Task keys of two batches stay apart even where their job IDs match.
        self._batch = uuid.uuid4().hex[:12]
        self._collector: threading.Thread | None = None

    def __enter__(self) -> DaskTranscoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect to the scheduler, wait for a worker and start collecting.

        Raises
        ------
        DaskSchedulerError
            If the scheduler does not respond within ``connect_timeout``, or
            its cluster has no worker within that time. The message names
            the address.
        """
        import distributed

        timeout = self.connect_timeout or DEFAULT_CONNECT_SECONDS
        try:
            self.client = distributed.Client(  # type: ignore[no-untyped-call]
                self.address, timeout=timeout, set_as_default=False)
        except OSError as exc:
            raise DaskSchedulerError(
                f"Unable to connect to the Dask scheduler at {self.address}: {exc}; "
                "check that the scheduler runs and that the address and port "
                "are right"
            ) from exc

        try:
            self.client.wait_for_workers(1, timeout=self.connect_timeout)
        except (TimeoutError, distributed.TimeoutError) as exc:
            self.close()
            raise DaskSchedulerError(
                f"The Dask cluster at {self.address} has no workers: none joined "
                f"within {self.connect_timeout:g} s; start dask workers that "
                "connect to this scheduler"
            ) from exc

        nthreads = self.client.nthreads()
        threads = sum(nthreads.values())
        self.max_in_flight = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * threads)
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        logger.info(
            "Transcoding on the Dask cluster at %s: %d worker(s), %d thread(s), "
            "up to %d files in flight", self.address, len(nthreads), threads,
            self.max_in_flight,
        )
        self._collector = threading.Thread(
            target=self._collect, name="dicomsend-dask-collector", daemon=True)
        self._collector.start()

    def submit(self, job: TranscodeJob, data: bytes) -> bool:
        """Start the task of ``job``, waiting while too many are in flight.

        Returns False, without starting it, when the transfer is stopping.
        A file that cannot be submitted fails through ``fail``.
        """
        while not self._slots.acquire(timeout=WAIT_SECONDS):
            if self.stop.is_set():
                return False
        if self.stop.is_set():
            self._slots.release()
            return False
        if self._broken is not None:
            self._slots.release()
            self._fail(self._failure(job, self._broken))
            return True

        try:
            # The bytes travel inside the task, so the scheduler keeps them
            # until the task ends and can run it again on another worker if
            # one is lost. Data scattered to a worker would be lost with it.
            future = self.client.submit(
                transcode_task, job, data, self.settings,
                key=f"dicomsend-transcode-{self._batch}-{job.job_id}", pure=False)
        except Exception as exc:  # noqa: BLE001 - distributed raises many types
            # A client that lost its scheduler raises several types here. The
            # file fails and the batch goes on.
            self._slots.release()
            self._fail(self._failure(job, _describe(exc)))
            return True

        running = _Running(job, future)
        with self._running_lock:
            self._running[job.job_id] = running
            self.submitted += 1
            self.peak_in_flight = max(self.peak_in_flight, len(self._running))
        future.add_done_callback(lambda _: self._done.put(running))
        return True

    def close(self) -> None:
        """Set ``stop``, cancel the tasks left, and disconnect."""
        self.stop.set()
        if self._collector is not None:
            self._collector.join(timeout=CLOSE_SECONDS)
        client, self.client = self.client, None
        if client is None:
            return
        logger.info("Ran %d transcode task(s) on the Dask cluster at %s, at most "
                    "%d at a time", self.submitted, self.address, self.peak_in_flight)
        with self._running_lock:
            left = list(self._running.values())
            self._running.clear()
        try:
            if left:
                client.cancel([item.future for item in left])
            client.close(timeout=CLOSE_SECONDS)
        except Exception:  # noqa: BLE001 - the batch is over either way
            logger.debug("Closing the Dask client of %s failed", self.address,
                         exc_info=True)

    # The collector thread

    def _collect(self) -> None:
        next_check = time.monotonic() + WORKER_CHECK_SECONDS
        no_workers_since: float | None = None
        while not self.stop.is_set():
            try:
                running = self._done.get(timeout=WAIT_SECONDS)
            except queue.Empty:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + WORKER_CHECK_SECONDS
                    no_workers_since = self._check_workers(no_workers_since)
                continue
            try:
                self._take_result(running)
            except Exception as exc:  # noqa: BLE001 - one file, not the batch
                logger.exception("Collecting the Dask result of '%s' failed",
                                 running.job.name)
                self._fail(self._failure(running.job, _describe(exc)))
            finally:
                with self._running_lock:
                    self._running.pop(running.job.job_id, None)
                running.future.release()
                self._slots.release()

    def _take_result(self, running: _Running) -> None:
        from engine.worker import EncodedDataset, spool_encoded

        job = running.job
        try:
            outcome = running.future.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker, cancelled...
            reason = self._broken or _describe(exc)
            outcome = self._failure(job, reason)
        if isinstance(outcome, EncodedDataset):
            outcome = spool_encoded(job, outcome, self.spool_dir)
        if isinstance(outcome, ReadyFile):
            self.deliver(outcome)
            return
        self._fail(outcome)

    def _check_workers(self, no_workers_since: float | None) -> float | None:
        """Fail the waiting files once the cluster has had no workers too long."""
        with self._running_lock:
            waiting = list(self._running.values())
        if not waiting or self._broken is not None:
            return None
        try:
            workers = len(self.client.nthreads())
        except Exception:  # noqa: BLE001 - a lost scheduler cancels the tasks
            return no_workers_since
        if workers:
            return None
        now = time.monotonic()
        if no_workers_since is None:
            logger.warning("The Dask cluster at %s has no workers; %d file(s) "
                           "wait for one", self.address, len(waiting))
            return now
        if now - no_workers_since < self.no_workers_timeout:
            return no_workers_since
        self._broken = (f"its cluster has had no workers for "
                        f"{self.no_workers_timeout:g} s")
        try:
            self.client.cancel([item.future for item in waiting])
        except Exception:  # noqa: BLE001 - a lost scheduler cancels them too
            logger.debug("Cancelling the waiting Dask tasks failed", exc_info=True)
        return None

    def _failure(self, job: TranscodeJob, reason: str) -> FileFailed:
        return FileFailed(
            job.job_id,
            f"Unable to transcode '{job.name}' on the Dask cluster at "
            f"{self.address}: {reason}; send it again",
            sop_instance_uid=job.sop_instance_uid,
            sop_class_uid=job.sop_class_uid,
            file_transfer_syntax=job.file_transfer_syntax,
        )

    def _fail(self, outcome: FileFailed) -> None:
        logger.error("%s", outcome.error)
        self.fail(outcome)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

