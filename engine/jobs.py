"""The work items that travel between the coordinator, workers and senders.

They carry paths, offsets and sizes, never a file's bytes, so a queue of
them stays small whatever the size of the files.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TranscodeJob:
    """A file a worker must re-encode into ``target_syntax``."""

    job_id: int
    name: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    file_transfer_syntax: str
    target_syntax: str


@dataclass(frozen=True, slots=True)
class ReadyFile:
    """A data set ready for the wire: ``length`` bytes of ``path`` from ``offset``.

    ``spooled`` files belong to the pipeline and are deleted once the
    receiver answered; the others are the caller's and are only read.
    ``source_path`` is the original file, kept for re-encoding when the
    receiver refuses ``transfer_syntax``.
    """

    job_id: int
    name: str
    path: str
    offset: int
    length: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    file_transfer_syntax: str
    spooled: bool
    source_path: str
    source_offset: int
    source_size: int
    # Odd-length values whose lengths add up to an even total; the data set
    # is written again with each value padded, as the standard requires.
    needs_padding: bool = False
