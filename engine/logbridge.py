"""Carry log records from worker and sender processes to the caller's process.

A child process logs as usual; its only handler puts each record on the
events queue. The coordinator hands the record to the logger of the same
name in the caller's process, so the caller's own logging configuration
decides where it goes. Child processes never configure output themselves.
"""

from __future__ import annotations

import logging
import traceback
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
    root.addHandler(EventQueueHandler(queue))
    root.setLevel(logging.WARNING)

    for name in PROJECT_LOGGERS:
        project_logger = logging.getLogger(name)
        for handler in list(project_logger.handlers):
            project_logger.removeHandler(handler)
        project_logger.setLevel(level)
        project_logger.propagate = True


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
