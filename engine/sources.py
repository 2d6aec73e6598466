"""Collect the files of a batch: single paths, directory trees and bytes.

Each file's header is read when it is added, so the batch has its size
and the presentation contexts it needs before anything is sent, as DCMTK's
storescu does. Files that are not DICOM are skipped when they were found
while walking a directory, and fail with a clear error when the caller named
them one by one.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import FileError, NotDicomError
from engine.header import FileHeader, read_header

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Source:
    """One file of the batch, with its header or the reason it cannot be sent.

    ``name`` is what events report: the path as given, or the name given
    with bytes from memory. Exactly one of ``path`` and ``data`` is set.
    """

    name: str
    path: str | None
    data: bytes | None
    header: FileHeader | None
    size: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A file found in a directory and left out of the batch, with the reason."""

    path: str
    reason: str


def source_from_path(path: str | os.PathLike[str]) -> Source | SkippedFile:
    """Read the header of one file named by the caller.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    IsADirectoryError
        If the path is a directory (use ``add_directory``).
    ValueError
        If the path is a pipe, socket or device rather than a regular file.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"Unable to add '{name}' as the file does not exist")
    if os.path.isdir(name):
        raise IsADirectoryError(
            f"Unable to add '{name}' as it is a directory; use add_directory()"
        )
    if not os.path.isfile(name):
        # Reading a FIFO or a device could block forever or never end.
        raise ValueError(
            f"Unable to add '{name}' as it is not a regular file (a pipe, socket "
            "or device); copy its content into a file first"
        )
    return _read_source(name, in_directory=False)


def sources_from_directory(
    directory: str | os.PathLike[str],
) -> Iterator[Source | SkippedFile]:
    """Walk ``directory`` recursively, in sorted order, reading each file's header.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If ``directory`` does not exist or is not a directory.
    """
    top = os.fspath(directory)
    if not os.path.exists(top):
        raise FileNotFoundError(
            f"Unable to add '{top}' as the directory does not exist"
        )
    if not os.path.isdir(top):
        raise NotADirectoryError(
            f"Unable to add '{top}' as it is not a directory; use add_file()"
        )

    def report_walk_error(error: OSError) -> None:
        logger.error("Unable to read directory '%s': %s", error.filename, error)

    for root, dirs, files in os.walk(top, onerror=report_walk_error):
        dirs.sort()
        for file_name in sorted(files):
            path = os.path.join(root, file_name)
            if os.path.islink(path) and not os.path.exists(path):
                yield SkippedFile(path, "broken symbolic link")
                continue
            if not os.path.isfile(path):
                # A FIFO would block the walk; sockets and devices are no files.
                yield SkippedFile(path, "not a regular file (a pipe, socket or "
                                        "device)")
                continue
            yield _read_source(path, in_directory=True)


def source_from_memory(data: bytes, name: str) -> Source | SkippedFile:
    """Read the header of a DICOM file held in memory under the name ``name``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"Unable to add '{name}' from memory: expected bytes, "
            f"got {type(data).__name__}"
        )
    data = bytes(data)
    try:
        header = read_header(io.BytesIO(data), name)
    except FileError as exc:
        return Source(name, None, data, None, len(data), str(exc))
    if header.is_dicomdir:
        return SkippedFile(name, "DICOMDIR (a media directory, not an object to store)")
    return Source(name, None, data, header, len(data))


def _read_source(path: str, in_directory: bool) -> Source | SkippedFile:
    if Path(path).name.upper() == "DICOMDIR":
        return SkippedFile(path, "DICOMDIR (a media directory, not an object to store)")

    try:
        with open(path, "rb") as fileobj:
            size = os.fstat(fileobj.fileno()).st_size
            header = read_header(fileobj, path)
    except FileError as exc:
        if in_directory and isinstance(exc, NotDicomError):
            return SkippedFile(path, str(exc))
        return Source(path, path, None, None, 0, str(exc))
    except OSError as exc:
        return Source(
            path, path, None, None, 0,
            f"Unable to read '{path}': {exc.strerror or exc}; check that the file "
            "exists and is readable",
        )

    if header.is_dicomdir:
        return SkippedFile(path, "DICOMDIR (a media directory, not an object to store)")
    return Source(path, path, None, header, size)
