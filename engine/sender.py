"""Sender processes: each owns one association and sends the files it takes.

The loop is synchronous: take a file, make sure an accepted presentation
context fits it, send it, read the status, report. A dead association is
never reused: the sender opens a new one and retries the file.
"""

from __future__ import annotations

import logging
import os
import signal
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.association import Association, ContextRequest, FileSlice
from engine.errors import (
    AssociationAbortedError,
    AssociationError,
    AssociationRejectedError,
    AssociationTimeoutError,
    ConnectionFailedError,
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
from engine.logbridge import install_child_logging
from engine.options import SendOptions
from engine.statuses import StatusCategory, StoreStatus
from engine.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, uid_name

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128
UNCOMPRESSED_FALLBACKS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# Errors after which the file is worth sending again on a new association.
TRANSIENT_ERRORS = (
    AssociationAbortedError,
    AssociationTimeoutError,
    ProtocolError,
    ConnectionFailedError,
)
EVENT_FLUSH_COUNT = 64
EVENT_FLUSH_SECONDS = 0.2


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
    """Send files from ``ready_queue`` until the coordinator sends ``None``."""
    install_child_logging(events_queue, settings.log_level)
    # Ctrl-C reaches every process of the terminal; the coordinator decides
    # what stops, and this process finishes its file first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    outbox = EventOutbox(events_queue)
    sender = Sender(settings, outbox.add)

    try:
        sender.open_association()
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
            for item in batch:
                sender.send_file(item)
            if sender.gave_up is not None:
                outbox.flush()
                events_queue.put(_association_failed(sender_id, sender.gave_up))
                break
    finally:
        outbox.flush()
        sender.close()
        events_queue.put(ProcessFinished("sender", sender_id))


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
        self.association: Association | None = None
        self.proposed: list[ContextRequest] = list(settings.contexts)
        self.refused_pairs: set[tuple[str, str]] = set()
        self.refused_classes: dict[str, str] = {}
        self.gave_up: AssociationError | None = None

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
        )
        self._learn_refusals(self.association)

    def _learn_refusals(self, association: Association) -> None:
        accepted_classes = {pair[0] for pair in association.accepted_contexts}
        for request in self.proposed:
            for syntax in request.transfer_syntaxes:
                if (request.abstract_syntax, syntax) not in association.accepted_contexts:
                    self.refused_pairs.add((request.abstract_syntax, syntax))
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

    def send_file(self, item: ReadyFile) -> None:
        """Send one file and emit exactly one outcome for it."""
        started = time.perf_counter()
        if self.settings.report_sending:
            self.emit(FileSending(item.job_id, item.sop_instance_uid,
                                  item.sop_class_uid))
        try:
            outcome = self._send_with_retries(item, started)
        finally:
            if item.spooled:
                _remove_quietly(item.path)
        self.emit(outcome)

    def _send_with_retries(self, item: ReadyFile, started: float) -> FileStored | FileFailed:
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return self._send_once(item, started)
            except TRANSIENT_ERRORS as exc:
                self._drop_association()
                if attempt + 1 == attempts:
                    if isinstance(exc, ConnectionFailedError):
                        # The receiver is gone: stop taking files rather than
                        # wait for the connect timeout once per file.
                        self.gave_up = exc
                    return self._failed(
                        item,
                        f"Unable to send '{item.name}' after {attempts} attempts: "
                        f"{exc}",
                    )
                delay = self.settings.retry_delay * (2 ** attempt)
                logger.warning(
                    "Sending '%s' failed (%s); retrying in %.1f s on a new "
                    "association", item.name, exc, delay,
                )
                time.sleep(delay)
                if not self._reopen(item):
                    return self._failed(
                        item, f"Unable to send '{item.name}': {self.gave_up}"
                    )
            except AssociationRejectedError as exc:
                self.gave_up = exc
                return self._failed(item, f"Unable to send '{item.name}': {exc}")
            except _FileProblem as exc:
                return self._failed(item, str(exc))
        raise AssertionError("unreachable")

    def _reopen(self, item: ReadyFile) -> bool:
        try:
            self.open_association()
        except AssociationRejectedError as exc:
            self.gave_up = exc
            return False
        except AssociationError as exc:
            logger.warning(
                "Reconnecting for '%s' failed: %s", item.name, exc
            )
            return True  # the next attempt reports or retries
        return True

    def _send_once(self, item: ReadyFile, started: float) -> FileStored | FileFailed:
        if self.association is None:
            self.open_association()
        association = self.association
        assert association is not None

        context_id, syntax = self._choose_context(item)
        payload: Any = self._payload_as_is(item)
        if syntax != item.transfer_syntax or payload.length % 2:
            payload = self._payload_reencoded(item, syntax)

        status = association.send_c_store(
            context_id, item.sop_class_uid, item.sop_instance_uid, payload
        )
        return self._outcome(item, status, syntax, started)

    def _outcome(
        self, item: ReadyFile, status: StoreStatus, syntax: str, started: float
    ) -> FileStored | FileFailed:
        duration = time.perf_counter() - started
        if status.category is StatusCategory.SUCCESS:
            return FileStored(item.job_id, item.sop_instance_uid, item.sop_class_uid,
                              syntax, duration, status.status)
        if status.category is StatusCategory.WARNING:
            warning = f"{item.name}: {status}"
            logger.warning("Stored '%s' with a warning: %s", item.name, status)
            return FileStored(item.job_id, item.sop_instance_uid, item.sop_class_uid,
                              syntax, duration, status.status, warning)
        return self._failed(
            item,
            f"The receiver did not store '{item.name}': {status}",
        )

    def _failed(self, item: ReadyFile, message: str) -> FileFailed:
        logger.error("%s", message)
        return FileFailed(
            item.job_id,
            message,
            sop_instance_uid=item.sop_instance_uid,
            sop_class_uid=item.sop_class_uid,
            file_transfer_syntax=item.file_transfer_syntax,
        )

    # Presentation contexts

    def _choose_context(self, item: ReadyFile) -> tuple[int, str]:
        """Find an accepted context for the file, re-associating if needed.

        Returns the context ID and the transfer syntax the file goes in: its
        own when accepted, else an uncompressed one the receiver accepted.
        """
        sop_class = item.sop_class_uid
        if sop_class in self.refused_classes:
            raise _FileProblem(
                f"Unable to send '{item.name}' as the receiver refused "
                f"{uid_name(sop_class)} ({self.refused_classes[sop_class]}); "
                "ask the receiver's administrator to accept this SOP class"
            )

        for syntax in (item.transfer_syntax, *UNCOMPRESSED_FALLBACKS):
            context_id = self._context_for(sop_class, syntax)
            if context_id is not None:
                if syntax != item.transfer_syntax:
                    logger.warning(
                        "Sending '%s' as %s because the receiver refused %s for %s",
                        item.name, uid_name(syntax), uid_name(item.transfer_syntax),
                        uid_name(sop_class),
                    )
                return context_id, syntax
            if sop_class in self.refused_classes:
                break

        reason = self.refused_classes.get(sop_class, "transfer syntaxes not supported")
        raise _FileProblem(
            f"Unable to send '{item.name}' as the receiver accepted no presentation "
            f"context for {uid_name(sop_class)} in {uid_name(item.transfer_syntax)}, "
            f"Explicit VR Little Endian or Implicit VR Little Endian ({reason}); "
            "check which transfer syntaxes the receiver accepts"
        )

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
            logger.warning("'%s' has an odd-length data set; sending it padded "
                           "to an even length", item.name)
        try:
            return reencode(item, syntax)
        except Exception as exc:  # noqa: BLE001 - any codec failure fails the file
            raise _FileProblem(
                f"Unable to send '{item.name}' as re-encoding it in "
                f"{uid_name(syntax)} failed ({exc})"
            ) from exc


class _FileProblem(Exception):
    """A reason this one file cannot be sent; the association is fine."""


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
