"""Sender processes: each owns one association and sends the files it takes.

The loop is synchronous: take a file, make sure an accepted presentation
context fits it, send it, read the status, report. A dead association is
never reused: the sender opens a new one and retries the file.

Transient failures are retried with exponential backoff: the association
aborted, closed or timed out, the connection failed, a rejected-transient
A-ASSOCIATE-RJ, and a 0xA7xx "out of resources" status. Anything else (a
protocol error, a permanent rejection, a failure status) is final for the
file. A sender that cannot open an association hands the files it holds
back to the ready queue and stops, so the other senders carry on with
fewer parallel associations.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from engine.association import Association, ContextRequest, FileSlice
from engine.errors import (
    AssociationAbortedError,
    AssociationError,
    AssociationRejectedError,
    AssociationTimeoutError,
    ConnectionFailedError,
    FileError,
    ProtocolError,
)
from engine.events import (
    AssociationFailed,
    AssociationOpened,
    FileFailed,
    FileSending,
    FileStored,
    ProcessFinished,
)
from engine.header import read_header
from engine.jobs import ReadyFile
from engine.lifetime import stop_with_parent
from engine.logbridge import install_child_logging
from engine.options import SendOptions
from engine.statuses import StatusCategory, StoreStatus, is_transient_status
from engine.association import MAX_CONTEXTS
from engine.uids import NATIVE_SYNTAXES, UNCOMPRESSED_FALLBACKS, uid_name

logger = logging.getLogger(__name__)

# Lossless compressed syntaxes that the transcode package encodes, in the
# order a refused compressed file tries them: JPEG-LS Lossless, JPEG 2000
# Lossless, RLE Lossless, JPEG Lossless SV1, JPEG Lossless.
LOSSLESS_FALLBACKS = (
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
)
# Association errors after which the file is worth sending again on a new
# association. A ProtocolError is not among them: a receiver that sends a
# malformed response to a file would most likely do it again.
TRANSIENT_ERRORS = (
    AssociationAbortedError,
    AssociationTimeoutError,
    ConnectionFailedError,
)
# After this many files in a row without any response, the sender stops.
MAX_UNANSWERED_FILES = 3
EVENT_FLUSH_COUNT = 64
EVENT_FLUSH_SECONDS = 0.2
# How long a sender that gives up waits for room in the ready queue to hand
# its files back before it fails them itself.
HAND_BACK_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class SenderSettings:
    options: SendOptions
    contexts: tuple[ContextRequest, ...]
    retries: int
    retry_delay: float
    log_level: int
    # Without an on_file_sending callback the coordinator reports "sending"
    # just before the outcome, which saves a message per file.
    report_sending: bool = True


def run_sender(
    sender_id: int, ready_queue: Any, events_queue: Any, settings: SenderSettings
) -> None:
    """Send files from ``ready_queue`` until the coordinator sends ``None``.

    A sender that cannot open an association, or loses it and cannot open a
    new one, reports ``AssociationFailed``, hands the files it still holds
    back to ``ready_queue`` for the other senders, and stops.
    """
    install_child_logging(events_queue, settings.log_level)
    # Ctrl-C reaches every process of the terminal; the coordinator decides
    # what stops, and this process finishes its file first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent()
    outbox = EventOutbox(events_queue)
    sender = Sender(settings, outbox.add)

    try:
        sender.open_first_association()
    except AssociationError as exc:
        events_queue.put(_association_failed(sender_id, exc))
        events_queue.put(ProcessFinished("sender", sender_id))
        return
    events_queue.put(AssociationOpened(sender_id))

    try:
        while True:
            batch = _next_batch(ready_queue, outbox)
            if batch is None:
                break
            unsent: list[ReadyFile] = []
            for index, item in enumerate(batch):
                if not sender.send_file(item):
                    unsent = batch[index:]
                    break
                if sender.gave_up is not None:
                    unsent = batch[index + 1:]
                    break
            if sender.gave_up is not None:
                outbox.flush()
                events_queue.put(_association_failed(sender_id, sender.gave_up))
                _hand_back(ready_queue, unsent, sender)
                break
    finally:
        outbox.flush()
        sender.close()
        events_queue.put(ProcessFinished("sender", sender_id))


def _hand_back(ready_queue: Any, items: list[ReadyFile], sender: Sender) -> None:
    """Return files to the ready queue, or fail them if it stays full."""
    if not items:
        return
    logger.warning(
        "Handing %d file(s) back to the other associations: %s",
        len(items), sender.gave_up,
    )
    try:
        ready_queue.put(items, timeout=HAND_BACK_SECONDS)
    except queue.Full:
        for item in items:
            sender.emit(sender.failed(
                item, f"Unable to send '{item.name}': {sender.gave_up}"
            ))
            if item.spooled:
                _remove_quietly(item.path)
        return


def _next_batch(ready_queue: Any, outbox: EventOutbox) -> list[ReadyFile] | None:
    """Take the next batch, flushing pending events before waiting for one."""
    try:
        return ready_queue.get_nowait()
    except queue.Empty:
        outbox.flush()
        return ready_queue.get()


def _association_failed(sender_id: int, exc: AssociationError) -> AssociationFailed:
    if isinstance(exc, AssociationRejectedError):
        return AssociationFailed(
            sender_id, type(exc).__name__, str(exc), exc.result, exc.source, exc.reason
        )
    return AssociationFailed(sender_id, type(exc).__name__, str(exc))


class EventOutbox:
    """Batch events so that a file costs one queue write per many files."""

    def __init__(self, events_queue: Any) -> None:
        self.events_queue = events_queue
        self.pending: list[Any] = []
        self.first_pending_at = 0.0

    def add(self, event: Any) -> None:
        if not self.pending:
            self.first_pending_at = time.monotonic()
        self.pending.append(event)
        if (len(self.pending) >= EVENT_FLUSH_COUNT
                or time.monotonic() - self.first_pending_at > EVENT_FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.events_queue.put(self.pending)
            self.pending = []


class Sender:
    """One association and the presentation contexts it has learned."""

    def __init__(self, settings: SenderSettings, emit: Callable[[Any], None]) -> None:
        self.settings = settings
        self.options = settings.options
        self.emit = emit
        self._ssl_context: Any = None
        self.association: Association | None = None
        self.proposed: list[ContextRequest] = list(settings.contexts)
        self.refused_pairs: set[tuple[str, str]] = set()
        self.refused_classes: dict[str, str] = {}
        # SOP classes for which a context of LOSSLESS_FALLBACKS was proposed.
        self.lossless_proposed: set[str] = set()
        self.gave_up: AssociationError | None = None
        # Files in a row whose every attempt timed out or was aborted.
        self.unanswered_files = 0
        # Of the file being sent, for its report record.
        self.attempts = 0
        self.bytes_sent: int | None = None

    # Association life cycle

    def open_association(self) -> None:
        """Open an association proposing ``self.proposed``; raises AssociationError."""
        address = self.options.address
        self.association = Association.open(
            address.host,
            address.port,
            calling_ae_title=self.options.calling_ae_title,
            called_ae_title=self.options.called_ae_title,
            contexts=self.proposed,
            max_pdu_length=self.options.max_pdu_length,
            timeouts=self.options.timeouts,
            tls=self._tls_context(),
        )
        self._learn_refusals(self.association)

    def _tls_context(self) -> Any:
        """Return this process's SSL context, built on first use; None without TLS."""
        if self.options.tls is None:
            return None
        if self._ssl_context is None:
            from engine.tls import build_context

            self._ssl_context = build_context(self.options.tls)
        return self._ssl_context

    def open_first_association(self) -> None:
        """Open the sender's first association, retrying a rejected-transient."""
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                self.open_association()
                return
            except AssociationRejectedError as exc:
                if not exc.transient or attempt + 1 == attempts:
                    raise
                delay = self._backoff(attempt)
                logger.warning("%s; trying again in %.1f s", exc, delay)
                time.sleep(delay)

    def _learn_refusals(self, association: Association) -> None:
        accepted = association.accepted_contexts
        accepted_classes = {pair[0] for pair in accepted}
        for request in self.proposed:
            pairs = [(request.abstract_syntax, syntax)
                     for syntax in request.transfer_syntaxes]
            # The receiver picks one syntax of a context; the others of a
            # context it accepted are not refused, only not chosen.
            if any(pair in accepted for pair in pairs):
                continue
            self.refused_pairs.update(pairs)
        for sop_class, reason in association.rejected_contexts.items():
            if sop_class not in accepted_classes and reason.startswith("abstract"):
                self.refused_classes[sop_class] = reason

    def close(self) -> None:
        if self.association is None:
            return
        try:
            self.association.release()
        except AssociationError as exc:
            logger.warning("Association release failed: %s", exc)
        self.association = None

    def _drop_association(self) -> None:
        """Abort a broken association; it is never used again."""
        if self.association is not None:
            try:
                self.association.abort()
            except AssociationError:
                pass
        self.association = None

    def _reassociate_with(self, request: ContextRequest) -> None:
        """Release, then propose the contexts so far plus ``request``."""
        proposed = [ctx for ctx in self.proposed if ctx != request]
        proposed.append(request)
        # Keep the most recently added contexts when over the limit.
        self.proposed = proposed[-MAX_CONTEXTS:]
        logger.info(
            "Opening a new association to propose %s with %s",
            uid_name(request.abstract_syntax),
            ", ".join(uid_name(ts) for ts in request.transfer_syntaxes),
        )
        self.close()
        self.open_association()

    # Sending

    def send_file(self, item: ReadyFile) -> bool:
        """Send one file and emit exactly one outcome for it.

        Returns False, with ``gave_up`` set and no outcome emitted, when no
        association could be opened for the file; the caller hands it back.
        """
        started = time.perf_counter()
        self.attempts, self.bytes_sent = 0, None
        if self.settings.report_sending:
            self.emit(FileSending(item.job_id, item.sop_instance_uid,
                                  item.sop_class_uid))
        outcome: FileStored | FileFailed | None = None
        try:
            outcome = self._send_with_retries(item, started)
        finally:
            if item.spooled and outcome is not None:
                _remove_quietly(item.path)
        if outcome is None:
            return False
        if isinstance(outcome, FileStored):
            outcome = replace(outcome, attempts=self.attempts,
                              bytes_sent=self.bytes_sent)
        else:
            outcome = replace(outcome, attempts=self.attempts,
                              duration_seconds=time.perf_counter() - started)
        self.emit(outcome)
        return True

    def _send_with_retries(
        self, item: ReadyFile, started: float
    ) -> FileStored | FileFailed | None:
        """Send ``item``, retrying transient failures; None when the sender gave up."""
        attempts = self.settings.retries + 1
        problem: AssociationError | StoreStatus | None = None
        for attempt in range(attempts):
            if attempt:
                delay = self._backoff(attempt - 1)
                logger.warning(
                    "Sending '%s' failed (%s); retrying in %.1f s (attempt %d of %d)",
                    item.name, problem, delay, attempt + 1, attempts,
                )
                time.sleep(delay)

            try:
                self.attempts = attempt + 1
                status, syntax = self._send_once(item)
            except AssociationRejectedError as exc:
                self._drop_association()
                if not exc.transient:
                    self.gave_up = exc
                    return None
                problem = exc
                continue
            except TRANSIENT_ERRORS as exc:
                self._drop_association()
                problem = exc
                continue
            except ProtocolError as exc:
                self._drop_association()
                return self.failed(item, f"Unable to send '{item.name}': {exc}")
            except FileError as exc:
                if self.association is not None and not self.association.is_alive:
                    self._drop_association()
                return self.failed(item, str(exc))
            except _FileProblem as exc:
                return self.failed(item, str(exc))

            # The receiver responded, so it is alive, whatever the status.
            self.unanswered_files = 0
            if not is_transient_status(status.status):
                return self._outcome(item, status, syntax, started)
            problem = status

        # Every attempt failed on a transient problem.
        if isinstance(problem, (ConnectionFailedError, AssociationRejectedError)):
            # No association can be opened: stop taking files rather than wait
            # for the connect timeout once per file, and let others send it.
            self.gave_up = problem
            return None
        if isinstance(problem, AssociationError):
            self.unanswered_files += 1
            if self.unanswered_files >= MAX_UNANSWERED_FILES:
                # A receiver that times out or aborts on file after file would
                # cost every remaining file its timeouts; this sender stops.
                logger.error(
                    "Giving up on %s: %d files in a row got no response (%s)",
                    self.options.address, self.unanswered_files, problem,
                )
                self.gave_up = problem
        if isinstance(problem, StoreStatus):
            return self.failed(
                item,
                f"The receiver did not store '{item.name}': {problem}, "
                f"{_attempts_text(attempts)}",
                problem.status,
            )
        return self.failed(
            item,
            f"Unable to send '{item.name}' after {_attempts_text(attempts)}: "
            f"{problem}",
        )

    def _backoff(self, retry: int) -> float:
        """Return the wait before retry number ``retry`` (0 for the first).

        The exponential delay is scaled by a random factor from 0.5 to 1.5, so
        senders rejected together do not all try again at the same moment.
        """
        return float(self.settings.retry_delay * (2 ** retry)
                     * random.uniform(0.5, 1.5))

    def _send_once(self, item: ReadyFile) -> tuple[StoreStatus, str]:
        """Send the file once; return the status and the syntax it went in."""
        if self.association is None:
            self.open_association()
        association = self.association
        assert association is not None

        context_id, syntax, payload = self._choose_context(item)
        association = self.association
        assert association is not None
        self.bytes_sent = len(payload) if isinstance(payload, bytes) else payload.length
        status = association.send_c_store(
            context_id, item.sop_class_uid, item.sop_instance_uid, payload
        )
        return status, syntax

    def _outcome(
        self, item: ReadyFile, status: StoreStatus, syntax: str, started: float
    ) -> FileStored | FileFailed:
        duration = time.perf_counter() - started
        if status.category is StatusCategory.SUCCESS:
            return FileStored(item.job_id, item.sop_instance_uid, item.sop_class_uid,
                              syntax, duration, status.status)
        if status.category is StatusCategory.WARNING:
            warning = f"{item.name}: {status}"
            logger.warning("Stored '%s' with a warning status: %s", item.name, status)
            return FileStored(item.job_id, item.sop_instance_uid, item.sop_class_uid,
                              syntax, duration, status.status, warning)
        return self.failed(
            item,
            f"The receiver did not store '{item.name}': {status}",
            status.status,
        )

    def failed(self, item: ReadyFile, message: str,
               status: int | None = None) -> FileFailed:
        """Log ``message`` and return the file's failure event."""
        logger.error("%s", message)
        return FileFailed(
            item.job_id,
            message,
            sop_instance_uid=item.sop_instance_uid,
            sop_class_uid=item.sop_class_uid,
            file_transfer_syntax=item.file_transfer_syntax,
            status=status,
        )

    # Presentation contexts

    def _choose_context(self, item: ReadyFile) -> tuple[int, str, Any]:
        """Find an accepted context for the file and the payload to send on it.

        Returns the context ID, the transfer syntax the file goes in and its
        data set. The file goes in its own syntax (or the forced one) when the
        receiver accepts it. Otherwise it falls back, in this order, to a
        lossless compressed syntax the receiver accepted (only for a file
        whose pixel data is compressed), then Explicit, then Implicit VR
        Little Endian. A fallback that cannot be encoded is skipped.
        """
        sop_class = item.sop_class_uid
        self._raise_if_class_refused(item)
        context_id = self._context_for(sop_class, item.transfer_syntax)
        if context_id is not None:
            payload: Any = self._payload_as_is(item)
            if payload.length % 2 or item.needs_padding:
                payload = self._payload_reencoded(item, item.transfer_syntax)
            return context_id, item.transfer_syntax, payload
        self._raise_if_class_refused(item)

        encoding_failures: list[str] = []
        for syntax in self._fallback_syntaxes(item):
            context_id = self._context_for(sop_class, syntax)
            if context_id is None:
                continue
            try:
                payload = self._payload_reencoded(item, syntax)
            except _FileProblem as exc:
                logger.warning("%s; trying the next transfer syntax", exc)
                encoding_failures.append(str(exc))
                continue
            logger.warning(
                "Sending '%s' as %s because the receiver rejected %s for %s",
                item.name, uid_name(syntax), uid_name(item.transfer_syntax),
                uid_name(sop_class),
            )
            return context_id, syntax, payload

        if encoding_failures:
            # The last attempt is the simplest syntax, so its reason is the
            # one that matters: most often the pixel data cannot be decoded.
            raise _FileProblem(
                f"{encoding_failures[-1]}, and the receiver rejected "
                f"{uid_name(item.transfer_syntax)} for {uid_name(sop_class)}"
            )
        reason = self.refused_classes.get(sop_class, "transfer syntaxes not supported")
        raise _FileProblem(
            f"Unable to send '{item.name}' as the receiver accepted no presentation "
            f"context for {uid_name(sop_class)} in {uid_name(item.transfer_syntax)}, "
            "a lossless compressed syntax, Explicit VR Little Endian or Implicit "
            f"VR Little Endian ({reason}); check which transfer syntaxes the "
            "receiver accepts"
        )

    def _raise_if_class_refused(self, item: ReadyFile) -> None:
        sop_class = item.sop_class_uid
        if sop_class in self.refused_classes:
            raise _FileProblem(
                f"Unable to send '{item.name}' as the receiver refused "
                f"{uid_name(sop_class)} ({self.refused_classes[sop_class]}); "
                "ask the receiver's administrator to accept this SOP class"
            )

    def _fallback_syntaxes(self, item: ReadyFile) -> list[str]:
        """List the syntaxes to try, in order, when the file's own is refused."""
        candidates: list[str] = []
        if item.transfer_syntax not in NATIVE_SYNTAXES:
            candidates.extend(self._accepted_lossless(item.sop_class_uid))
        candidates.extend(UNCOMPRESSED_FALLBACKS)
        return [syntax for syntax in candidates if syntax != item.transfer_syntax]

    def _accepted_lossless(self, sop_class: str) -> list[str]:
        """Return the lossless compressed syntaxes accepted for ``sop_class``.

        When none was accepted and none proposed yet, one context offering all
        of LOSSLESS_FALLBACKS is proposed on a new association, and the
        receiver picks the one it prefers.
        """
        accepted = self._lossless_in(sop_class)
        if accepted or sop_class in self.lossless_proposed:
            return accepted
        self.lossless_proposed.add(sop_class)
        self._reassociate_with(ContextRequest(sop_class, LOSSLESS_FALLBACKS))
        return self._lossless_in(sop_class)

    def _lossless_in(self, sop_class: str) -> list[str]:
        association = self.association
        assert association is not None
        return [syntax for syntax in LOSSLESS_FALLBACKS
                if association.find_context(sop_class, syntax) is not None]

    def _context_for(self, sop_class: str, syntax: str) -> int | None:
        """Return an accepted context for the pair, proposing it if never asked."""
        association = self.association
        assert association is not None
        context_id = association.find_context(sop_class, syntax)
        if context_id is not None:
            return context_id
        if (sop_class, syntax) in self.refused_pairs:
            return None

        self._reassociate_with(ContextRequest(sop_class, (syntax,)))
        association = self.association
        assert association is not None
        return association.find_context(sop_class, syntax)

    # Payloads

    def _payload_as_is(self, item: ReadyFile) -> FileSlice:
        if item.spooled:
            return FileSlice(item.path, item.offset, item.length)
        return FileSlice(item.path, *self._current_extent(item))

    def _current_extent(self, item: ReadyFile) -> tuple[int, int]:
        """Check the caller's file is still there and where its data set lies now."""
        try:
            size = os.stat(item.path).st_size
        except OSError as exc:
            raise _FileProblem(
                f"Unable to send '{item.name}' as it can no longer be read "
                f"({exc.strerror or exc}); it was deleted or moved after it was added"
            ) from exc
        if size == item.source_size:
            return item.offset, item.length

        logger.warning("'%s' changed since it was added; reading its header again",
                       item.name)
        try:
            with open(item.path, "rb") as fileobj:
                header = read_header(fileobj, item.name)
        except (OSError, ValueError) as exc:
            raise _FileProblem(
                f"Unable to send '{item.name}' as it changed after it was added "
                f"and can no longer be read: {exc}"
            ) from exc
        if (header.sop_instance_uid != item.sop_instance_uid
                or header.transfer_syntax != item.transfer_syntax):
            raise _FileProblem(
                f"Unable to send '{item.name}' as it was replaced by another object "
                "after it was added; add it again"
            )
        return header.dataset_offset, size - header.dataset_offset

    def _payload_reencoded(self, item: ReadyFile, syntax: str) -> bytes:
        """Re-encode the file into ``syntax``, padding odd-length values."""
        from engine.fallback import reencode

        if syntax == item.transfer_syntax:
            logger.warning("'%s' has odd-length values; sending it with each "
                           "value padded to an even length", item.name)
        try:
            return reencode(item, syntax, verify=self.options.verify)
        except Exception as exc:  # noqa: BLE001 - any codec failure fails the file
            raise _FileProblem(
                f"Unable to send '{item.name}' as re-encoding it in "
                f"{uid_name(syntax)} failed ({exc})"
            ) from exc


def _attempts_text(attempts: int) -> str:
    return "1 attempt" if attempts == 1 else f"{attempts} attempts"


class _FileProblem(Exception):
    """A reason this one file cannot be sent; the association is fine."""


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
