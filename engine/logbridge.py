"""Carry log records from worker and sender processes to the caller's process.

A child process logs as usual; its only handler puts each record on the
events queue. The coordinator hands the record to the logger of the same
name in the caller's process, so the caller's own logging configuration
decides where it goes. Child processes never configure output themselves.
"""

from __future__ import annotations

import logging
import traceback
import warnings
from typing import Any

from engine.events import LogMessage

# Loggers of this project whose records cross to the caller's process.
PROJECT_LOGGERS = ("engine", "transcode")


class EventQueueHandler(logging.Handler):
    """Put each record on a multiprocessing queue as a picklable dict."""

    def __init__(self, queue: Any) -> None:
        super().__init__()
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = "".join(
                    traceback.format_exception(*record.exc_info)
                ).rstrip()
            fields["exc_info"] = None
            self.queue.put(LogMessage(fields))
        except Exception:  # noqa: BLE001 - logging must never break the sender
            self.handleError(record)


def install_child_logging(queue: Any, level: int) -> None:
    """Route every record of a child process to ``queue``, at ``level`` and above."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = EventQueueHandler(queue)
    handler.addFilter(_ProjectRecordsFilter(level))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    if level > logging.DEBUG:
        warnings.simplefilter("ignore")

    # Libraries such as pydicom attach their own stderr handlers; in a child
    # every record must go through the queue instead.
    for existing in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(existing, logging.Logger):
            for handler in list(existing.handlers):
                existing.removeHandler(handler)
            existing.propagate = True

    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)


class _ProjectRecordsFilter(logging.Filter):
    """Pass this project's records; pass a library's only when debugging.

    Libraries such as pydicom and openjpeg log every codec failure with a
    traceback; the engine reports the same failure once per file.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.debugging = level <= logging.DEBUG

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debugging:
            return True
        return record.name.split(".", 1)[0] in PROJECT_LOGGERS


def replay_record(message: LogMessage) -> None:
    """Emit a child's record through the caller's logger of the same name."""
    record = logging.makeLogRecord(message.record)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def child_log_level(verbose: bool) -> int:
    """Pick the level child processes log at, from the caller's own setup."""
    caller_level = logging.getLogger("engine").getEffectiveLevel()
    if verbose:
        return min(logging.INFO, caller_level)
    return max(min(caller_level, logging.WARNING), logging.DEBUG)
