"""Read what the send path needs from the start of a DICOM file.

A C-STORE needs the SOP Class UID, the SOP Instance UID, the transfer syntax
and where the data set begins. For Part 10 files all four come from the file
meta group, which this module parses itself: it is a few hundred bytes of
explicit VR little endian, and reading it here costs far less than building
a pydicom dataset. Files without file meta fall back to pydicom.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from typing import TYPE_CHECKING

from engine.errors import InvalidDicomFileError, NotDicomError
from engine.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

if TYPE_CHECKING:
    import pydicom

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
MEDIA_STORAGE_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"

# Explicit VR elements whose length field takes 4 bytes after 2 reserved ones.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
             b"UN", b"UR", b"UT", b"UV"}
_TAG_MEDIA_STORAGE_SOP_CLASS = 0x0002_0002
_TAG_MEDIA_STORAGE_SOP_INSTANCE = 0x0002_0003
_TAG_TRANSFER_SYNTAX = 0x0002_0010
_HEADER_READ_SIZE = 8192


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What a sender needs to know about one file before sending it."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    has_file_meta: bool

    @property
    def is_dicomdir(self) -> bool:
        return self.sop_class_uid == MEDIA_STORAGE_DIRECTORY_STORAGE


def read_header(fileobj: io.BufferedIOBase, name: str) -> FileHeader:
    """Read the header of the DICOM file ``name`` from ``fileobj``.

    Raises
    ------
    NotDicomError
        If the file is empty or is not DICOM at all.
    InvalidDicomFileError
        If the file is DICOM but truncated inside its header, or lacks a SOP
        Class or SOP Instance UID. Both messages name the file.
    """
    start = fileobj.read(_HEADER_READ_SIZE)
    if not start:
        raise NotDicomError(f"Unable to send '{name}' as the file is empty")

    meta_start = _find_meta_start(start)
    if meta_start is not None:
        header = _parse_file_meta(fileobj, start, meta_start, name)
        if header is not None:
            return header

    fileobj.seek(0)
    return _read_header_with_pydicom(fileobj, name, has_magic=meta_start is not None)


def _find_meta_start(start: bytes) -> int | None:
    """Return where group 0002 begins, after the preamble or without one."""
    if start[PREAMBLE_LENGTH:PREAMBLE_LENGTH + 4] == MAGIC:
        return PREAMBLE_LENGTH + 4
    if start[:4] == MAGIC:
        return 4
    return None


def _parse_file_meta(
    fileobj: io.BufferedIOBase, start: bytes, offset: int, name: str
) -> FileHeader | None:
    """Parse the file meta group; None when it lacks the transfer syntax."""
    buffer = start
    values: dict[int, str] = {}

    while True:
        if len(buffer) < offset + 8:
            more = fileobj.read(_HEADER_READ_SIZE)
            if not more:
                raise InvalidDicomFileError(
                    f"Unable to send '{name}' as the file ends inside its file "
                    "meta information; the file is truncated"
                )
            buffer += more
            continue

        group, element = struct.unpack_from("<HH", buffer, offset)
        if group != 0x0002:
            break

        vr = buffer[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            if len(buffer) < offset + 12:
                buffer += fileobj.read(_HEADER_READ_SIZE)
                if len(buffer) < offset + 12:
                    raise InvalidDicomFileError(
                        f"Unable to send '{name}' as the file ends inside its "
                        "file meta information; the file is truncated"
                    )
            (length,) = struct.unpack_from("<L", buffer, offset + 8)
            value_start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", buffer, offset + 6)
            value_start = offset + 8
        if length == 0xFFFF_FFFF:
            raise InvalidDicomFileError(
                f"Unable to send '{name}' as its file meta information has an "
                "element of undefined length; the file is not valid DICOM"
            )

        value_end = value_start + length
        while len(buffer) < value_end:
            more = fileobj.read(max(_HEADER_READ_SIZE, value_end - len(buffer)))
            if not more:
                raise InvalidDicomFileError(
                    f"Unable to send '{name}' as the file ends inside its file "
                    "meta information; the file is truncated"
                )
            buffer += more

        tag = (group << 16) | element
        if tag in (_TAG_MEDIA_STORAGE_SOP_CLASS, _TAG_MEDIA_STORAGE_SOP_INSTANCE,
                   _TAG_TRANSFER_SYNTAX):
            values[tag] = _decode_uid(buffer[value_start:value_end])
        offset = value_end

    transfer_syntax = values.get(_TAG_TRANSFER_SYNTAX)
    sop_class = values.get(_TAG_MEDIA_STORAGE_SOP_CLASS)
    sop_instance = values.get(_TAG_MEDIA_STORAGE_SOP_INSTANCE)
    if not transfer_syntax or not sop_class or not sop_instance:
        return None
    return FileHeader(sop_class, sop_instance, transfer_syntax, offset, True)


def _decode_uid(value: bytes) -> str:
    return value.decode("ascii", errors="replace").rstrip("\x00 ").strip()


def _read_header_with_pydicom(
    fileobj: io.BufferedIOBase, name: str, has_magic: bool
) -> FileHeader:
    """Read a file that has no usable file meta: a raw data set, most often."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(
            fileobj,
            force=True,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError,
            struct.error, TypeError, AttributeError, NotImplementedError) as exc:
        error_class = InvalidDicomFileError if has_magic else NotDicomError
        raise error_class(
            f"Unable to send '{name}' as it could not be read as DICOM: {exc}"
        ) from exc

    sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
    sop_instance = str(dataset.get("SOPInstanceUID", "") or "").strip()
    if not sop_class and not sop_instance and not has_magic:
        raise NotDicomError(
            f"Unable to send '{name}' as it is not a DICOM file: no DICM prefix "
            "and no SOP Class UID or SOP Instance UID could be read"
        )
    if not sop_class and not sop_instance:
        raise InvalidDicomFileError(
            f"Unable to send '{name}' as it has neither a SOP Class UID (0008,0016) "
            "nor a SOP Instance UID (0008,0018); add both before sending"
        )
    if not sop_class:
        raise InvalidDicomFileError(
            f"Unable to send '{name}' as it has no SOP Class UID (0008,0016); "
            "add the element before sending"
        )
    if not sop_instance:
        raise InvalidDicomFileError(
            f"Unable to send '{name}' as it has no SOP Instance UID (0008,0018); "
            "add the element before sending"
        )

    file_meta = getattr(dataset, "file_meta", None)
    meta_syntax = file_meta.get("TransferSyntaxUID") if file_meta else None
    if meta_syntax:
        transfer_syntax = str(meta_syntax)
    else:
        transfer_syntax = _syntax_of(dataset)
    offset = _dataset_offset(fileobj)
    return FileHeader(sop_class, sop_instance, transfer_syntax, offset,
                      bool(file_meta))


def _syntax_of(dataset: pydicom.Dataset) -> str:
    implicit, little_endian = dataset.original_encoding
    if implicit:
        return IMPLICIT_VR_LITTLE_ENDIAN
    if little_endian:
        return EXPLICIT_VR_LITTLE_ENDIAN
    return EXPLICIT_VR_BIG_ENDIAN


def _dataset_offset(fileobj: io.BufferedIOBase) -> int:
    """Find where the data set starts: after preamble and meta, if any."""
    import pydicom

    fileobj.seek(0)
    preamble = pydicom.filereader.read_preamble(fileobj, force=True)
    if preamble is None:
        fileobj.seek(0)
    pydicom.filereader._read_file_meta_info(fileobj)
    return fileobj.tell()
