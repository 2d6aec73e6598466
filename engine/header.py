"""Read what the send path needs from the start of a DICOM file.

A C-STORE needs the SOP Class UID, the SOP Instance UID, the transfer syntax
and where the data set begins. For Part 10 files all four come from the file
meta group, which this module parses itself: it is a few hundred bytes of
explicit VR little endian, and reading it here costs far less than building
a pydicom dataset. Files without file meta fall back to pydicom.

The header read also walks the data set's element headers (``check_dataset``)
without decoding a value. It follows each element's length and descends into
sequences, items of undefined length and the fragments of encapsulated pixel
data. So it finds a file truncated anywhere, the elements of odd length, and
whether the object has pixel data. Values of defined length are skipped by
seeking, so the walk reads a few kilobytes even of a file of gigabytes.
"""

from __future__ import annotations

import enum
import io
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import InvalidDicomFileError, NotDicomError
from engine.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
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
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL",
              b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM",
              b"UI", b"UL", b"US"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
             b"UN", b"UR", b"UT", b"UV"}
_SHORT_VR_CODES = {
    little: {int.from_bytes(vr, "little" if little else "big") for vr in _SHORT_VRS}
    for little in (True, False)
}
_LONG_VR_CODES = {
    little: {int.from_bytes(vr, "little" if little else "big") for vr in _LONG_VRS}
    for little in (True, False)
}
_TAG_MEDIA_STORAGE_SOP_CLASS = 0x0002_0002
_TAG_MEDIA_STORAGE_SOP_INSTANCE = 0x0002_0003
_TAG_TRANSFER_SYNTAX = 0x0002_0010
_HEADER_READ_SIZE = 8192


class PixelDataKind(enum.Enum):
    """The pixel data element at the top level of a data set, if any."""

    NONE = "none"
    EMPTY = "empty"
    NATIVE = "native"
    ENCAPSULATED = "encapsulated"


@dataclass(frozen=True, slots=True)
class DatasetLayout:
    """Findings of ``check_dataset`` in the element headers of a data set.

    Attributes
    ----------
    pixel_data : PixelDataKind
        Whether a Pixel Data, Float Pixel Data or Double Float Pixel Data
        element is present at the top level, and how it is encoded.
    odd_length_tags : tuple of int
        Tags of the elements whose value, or one of whose pixel data
        fragments, has an odd length, which the standard forbids; the first
        16 in file order. Elements inside items of defined length are not
        visited.
    length : int
        The length of the data set in bytes.
    sop_class_uid, sop_instance_uid : str or None
        The values of (0008,0016) and (0008,0018) in the data set; None when
        the element is missing or empty.
    """

    pixel_data: PixelDataKind
    odd_length_tags: tuple[int, ...]
    length: int
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None

    @property
    def has_odd_lengths(self) -> bool:
        return bool(self.odd_length_tags)


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The facts a sender needs about one file before sending it.

    ``layout`` is None when the data set was not walked, because it is
    deflated or the caller asked for no check.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    has_file_meta: bool
    layout: DatasetLayout | None = None

    @property
    def is_dicomdir(self) -> bool:
        return self.sop_class_uid == MEDIA_STORAGE_DIRECTORY_STORAGE


def read_header(
    fileobj: io.BufferedIOBase, name: str, *, check: bool = True
) -> FileHeader:
    """Read the header of the DICOM file ``name`` from ``fileobj``.

    Parameters
    ----------
    fileobj : binary file object
        Opened for reading at its start; it must support ``seek``.
    name : str
        The file's name for messages.
    check : bool
        Also walk the data set with ``check_dataset`` and keep the result in
        ``FileHeader.layout``.

    Raises
    ------
    NotDicomError
        If the file is empty or is not DICOM at all.
    InvalidDicomFileError
        If the file is DICOM but truncated, structurally invalid (with
        ``check``), or lacks a SOP Class or SOP Instance UID. Every message
        names the file.
    """
    start = fileobj.read(_HEADER_READ_SIZE)
    if not start:
        raise NotDicomError(f"Unable to send '{name}' as the file is empty")

    header = None
    meta_start = _find_meta_start(start)
    if meta_start is not None:
        header = _parse_file_meta(fileobj, start, meta_start, name)
    if header is None:
        fileobj.seek(0)
        header = _read_header_with_pydicom(fileobj, name,
                                           has_magic=meta_start is not None)
    if not check or header.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # NOTE: a deflated data set is one zlib stream; checking it would
        # mean inflating all of it, so it is sent unchecked.
        return header

    size = fileobj.seek(0, io.SEEK_END)
    window = _Window(fileobj, start, 0, size)
    layout = _walk_dataset(window, header.dataset_offset, header.transfer_syntax,
                           name)
    # The receiver checks the C-STORE request against the data set, so the
    # data set's UIDs win over file meta that disagrees, as in DCMTK's storescu.
    # NOTE: a data set without them is still sent under the file meta's UIDs,
    # and the receiver decides whether it stores it.
    return FileHeader(layout.sop_class_uid or header.sop_class_uid,
                      layout.sop_instance_uid or header.sop_instance_uid,
                      header.transfer_syntax, header.dataset_offset,
                      header.has_file_meta, layout)


def check_dataset(
    data: bytes | bytearray | memoryview, transfer_syntax: str, name: str
) -> DatasetLayout:
    """Walk the element headers of an encoded data set held in memory.

    Parameters
    ----------
    data : bytes-like
        The data set without preamble or file meta, as it goes on the wire.
    transfer_syntax : str
        The UID of the syntax ``data`` is encoded in; not a deflated one.
    name : str
        The file's name for messages.

    Returns
    -------
    DatasetLayout

    Raises
    ------
    InvalidDicomFileError
        If the data set ends inside an element, a sequence or the pixel data,
        or its structure is invalid; the message names the file, the element
        and what to do.
    """
    view = memoryview(data).cast("B")
    return _walk_dataset(_Window(None, view, 0, len(view)), 0, transfer_syntax, name)


def check_dataset_file(
    path: str | os.PathLike[str], offset: int, transfer_syntax: str, name: str
) -> DatasetLayout:
    """Walk the element headers of the data set stored in ``path`` from ``offset``.

    Only element headers are read (a few kilobytes for most files), so this is
    cheap even for a file of gigabytes.

    Raises
    ------
    InvalidDicomFileError
        As for ``check_dataset``.
    OSError
        If the file cannot be opened or read.
    """
    with open(path, "rb") as fileobj:
        size = os.fstat(fileobj.fileno()).st_size
        return _walk_dataset(_Window(fileobj, b"", 0, size), offset,
                             transfer_syntax, name)


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


# The data set walk

_UNDEFINED_LENGTH = 0xFFFF_FFFF
_ITEM = 0xFFFE_E000
_ITEM_DELIMITER = 0xFFFE_E00D
_SEQUENCE_DELIMITER = 0xFFFE_E0DD
# Pixel Data, Float Pixel Data, Double Float Pixel Data.
_PIXEL_TAGS = {0x7FE0_0010, 0x7FE0_0008, 0x7FE0_0009}
_TAG_SOP_CLASS = 0x0008_0016
_TAG_SOP_INSTANCE = 0x0008_0018
# Top-level elements whose presence or value the layout records.
_NOTED_TAGS = _PIXEL_TAGS | {_TAG_SOP_CLASS, _TAG_SOP_INSTANCE}
_MAX_DEPTH = 32
_MAX_ODD_TAGS = 16
# Bytes read when the walk continues past what it holds, and when it jumps
# over a value to the next header.
_WALK_READ_SIZE = 65536
_JUMP_READ_SIZE = 4096
# The VR is read as an unsigned short in the file's byte order, which saves
# creating a bytes object per element. The sets below contain both orders.
_EXPLICIT = {True: struct.Struct("<HHHH"), False: struct.Struct(">HHHH")}
_IMPLICIT = {True: struct.Struct("<HHL"), False: struct.Struct(">HHL")}
_LENGTH = {True: struct.Struct("<L"), False: struct.Struct(">L")}


class _Window:
    """The bytes of a data set source, read on demand around the walk position."""

    __slots__ = ("base", "data", "fileobj", "size")

    def __init__(self, fileobj: io.BufferedIOBase | None,
                 data: bytes | memoryview, base: int, size: int) -> None:
        self.fileobj = fileobj
        self.data = data
        self.base = base
        self.size = size

    def load(self, pos: int, count: int) -> int:
        """Read at least ``count`` bytes from ``pos`` into the window, if they exist.

        Returns the number of bytes from ``pos`` the window contains afterwards.
        """
        held = self.base + len(self.data) - pos
        if pos >= self.base and held >= count:
            return held
        if self.fileobj is None:
            return max(held, 0) if pos >= self.base else 0
        sequential = held >= 0 or not self.data
        read_size = max(count, _WALK_READ_SIZE if sequential else _JUMP_READ_SIZE)
        self.fileobj.seek(pos)
        self.data = self.fileobj.read(min(read_size, max(self.size - pos, 0)))
        self.base = pos
        return len(self.data)


class _Walk:
    """One walk over a data set; raises InvalidDicomFileError on the first fault."""

    def __init__(self, window: _Window, offset: int, name: str) -> None:
        self.window = window
        self.offset = offset
        self.name = name
        self.odd_tags: list[int] = []
        self.pixel_data = PixelDataKind.NONE
        self.last_tag = 0
        self.uids: dict[int, str] = {}

    def elements(self, pos: int, limit: int, explicit: bool, little: bool,
                 depth: int, delimited: bool, parent: int) -> int:
        """Walk elements from ``pos`` to ``limit``, or to an item delimiter.

        This loop runs once per element of every file sent, so it keeps the
        window's bytes in locals and looks each VR up in one set.
        """
        window = self.window
        unpack = (_EXPLICIT if explicit else _IMPLICIT)[little].unpack_from
        unpack_length = _LENGTH[little].unpack_from
        short_vrs, long_vrs = _SHORT_VR_CODES[little], _LONG_VR_CODES[little]
        noted_tags = _NOTED_TAGS
        data, base = window.data, window.base
        held_end = base + len(data)
        top = depth == 0
        tag = self.last_tag

        while pos < limit:
            if pos + 12 > held_end or pos < base:
                window.load(pos, 12)
                data, base = window.data, window.base
                held_end = base + len(data)
                if pos + 8 > held_end:
                    self.last_tag = tag
                    after = (f"after {_describe(tag)}" if tag
                             else "at the start of the data set")
                    raise self.truncated(f"the header of the element {after}")

            rel = pos - base
            if explicit:
                group, element, vr, length = unpack(data, rel)
                if vr in short_vrs:
                    header_length = 8
                elif vr in long_vrs and group != 0xFFFE:
                    if pos + 12 > held_end:
                        current = group << 16 | element
                        raise self.truncated(f"the header of {_describe(current)}")
                    length = unpack_length(data, rel + 8)[0]
                    header_length = 12
                elif group == 0xFFFE:
                    length = unpack_length(data, rel + 4)[0]
                    header_length = 8
                else:
                    vr_bytes = vr.to_bytes(2, "little" if little else "big")
                    if not (65 <= vr_bytes[0] <= 90 and 65 <= vr_bytes[1] <= 90):
                        raise self.invalid(f"{_describe(group << 16 | element)} has "
                                           f"the invalid VR {vr_bytes!r}", pos)
                    # NOTE: an uppercase VR in neither list, such as one newer
                    # than PS3.5 2024, is assumed to have a 2-byte length.
                    header_length = 8
            else:
                group, element, length = unpack(data, rel)
                vr = 0
                header_length = 8
            tag = group << 16 | element

            if group == 0xFFFE:
                # Items and delimiters have a 4-byte length and no VR.
                if tag == _ITEM_DELIMITER and delimited:
                    self.last_tag = tag
                    return pos + 8
                raise self.invalid(f"{_describe(tag)} where an element was expected",
                                   pos)

            if length == _UNDEFINED_LENGTH:
                self.last_tag = tag
                pos = self.undefined_length(tag, vr, pos + header_length, explicit,
                                            little, depth)
                if top and tag in _PIXEL_TAGS:
                    self.pixel_data = PixelDataKind.ENCAPSULATED
                data, base = window.data, window.base
                held_end = base + len(data)
                continue

            if length & 1 and len(self.odd_tags) < _MAX_ODD_TAGS:
                self.odd_tags.append(tag)
            pos += header_length + length
            if pos > limit:
                raise self.truncated(f"the value of {_describe(tag)}")
            if top and tag in noted_tags:
                self.note(tag, pos - length, length)
                data, base = window.data, window.base
                held_end = base + len(data)

        self.last_tag = tag
        if delimited:
            raise self.truncated(f"an item of {_describe(parent)}")
        return pos

    def note(self, tag: int, value_start: int, length: int) -> None:
        """Keep what the layout reports about a top-level element."""
        if tag in _PIXEL_TAGS:
            self.pixel_data = PixelDataKind.NATIVE if length else PixelDataKind.EMPTY
            return
        window = self.window
        window.load(value_start, length)
        start = value_start - window.base
        self.uids[tag] = _decode_uid(bytes(window.data[start:start + length]))

    def undefined_length(self, tag: int, vr_code: int, pos: int,
                         explicit: bool, little: bool, depth: int) -> int:
        """Walk the value of an element of undefined length; return where it ends."""
        vr = b""
        if explicit:
            vr = vr_code.to_bytes(2, "little" if little else "big")
        if depth >= _MAX_DEPTH:
            raise self.invalid(f"sequences nest deeper than {_MAX_DEPTH} levels",
                               pos)
        if tag in _PIXEL_TAGS or vr in (b"OB", b"OW"):
            return self.fragments(tag, pos, little)
        if vr == b"UN":
            # PS3.5 6.2.2: a UN value of undefined length is a sequence in
            # Implicit VR Little Endian.
            return self.items(tag, pos, False, True, depth)
        if explicit and vr != b"SQ":
            raise self.invalid(f"{_describe(tag)} has VR {vr.decode('latin-1')} "
                               "and an undefined length", pos)
        return self.items(tag, pos, explicit, little, depth)

    def items(self, tag: int, pos: int, explicit: bool, little: bool,
              depth: int) -> int:
        """Walk the items of a sequence of undefined length."""
        window = self.window
        head = _IMPLICIT[little]
        while True:
            if window.load(pos, 8) < 8:
                raise self.truncated(f"the sequence {_describe(tag)}")
            group, element, length = head.unpack_from(window.data, pos - window.base)
            item_tag = group << 16 | element
            if item_tag == _SEQUENCE_DELIMITER:
                return pos + 8
            if item_tag != _ITEM:
                raise self.invalid(f"the sequence {_describe(tag)} contains "
                                   f"{_describe(item_tag)} where an item was "
                                   "expected", pos)
            if length == _UNDEFINED_LENGTH:
                pos = self.elements(pos + 8, window.size, explicit, little,
                                    depth + 1, True, tag)
            else:
                pos += 8 + length
                if pos > window.size:
                    raise self.truncated(f"an item of {_describe(tag)}")

    def fragments(self, tag: int, pos: int, little: bool) -> int:
        """Walk the items of encapsulated data: offset table, then fragments."""
        window = self.window
        head = _IMPLICIT[little]
        while True:
            if window.load(pos, 8) < 8:
                raise self.truncated(f"the encapsulated {_describe(tag)}")
            group, element, length = head.unpack_from(window.data, pos - window.base)
            item_tag = group << 16 | element
            if item_tag == _SEQUENCE_DELIMITER:
                return pos + 8
            if item_tag != _ITEM or length == _UNDEFINED_LENGTH:
                raise self.invalid(f"the encapsulated {_describe(tag)} contains "
                                   f"{_describe(item_tag)} where a fragment was "
                                   "expected", pos)
            if length & 1 and len(self.odd_tags) < _MAX_ODD_TAGS:
                self.odd_tags.append(tag)
            pos += 8 + length
            if pos > window.size:
                raise self.truncated(f"a fragment of the encapsulated "
                                     f"{_describe(tag)}")

    def truncated(self, where: str) -> InvalidDicomFileError:
        return InvalidDicomFileError(
            f"Unable to send '{self.name}' as the file ends inside {where}; it is "
            "truncated, so copy it again from its source"
        )

    def invalid(self, what: str, pos: int) -> InvalidDicomFileError:
        return InvalidDicomFileError(
            f"Unable to send '{self.name}' as its data set is not valid DICOM: "
            f"{what} at byte {pos - self.offset} of the data set; repair or export "
            "the file again"
        )


def _walk_dataset(window: _Window, offset: int, transfer_syntax: str,
                  name: str) -> DatasetLayout:
    walk = _Walk(window, offset, name)
    explicit = transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN
    little = transfer_syntax != EXPLICIT_VR_BIG_ENDIAN
    if explicit and window.load(offset, 8) >= 8:
        vr = window.data[offset - window.base + 4:offset - window.base + 6]
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            # Some writers encode the data set in implicit VR under an explicit
            # syntax; pydicom and DCMTK read such files, so the walk does too.
            explicit = False
    end = walk.elements(offset, window.size, explicit, little, 0, False, 0)
    return DatasetLayout(walk.pixel_data, tuple(walk.odd_tags), end - offset,
                         walk.uids.get(_TAG_SOP_CLASS) or None,
                         walk.uids.get(_TAG_SOP_INSTANCE) or None)


def _describe(tag: int) -> str:
    """Return ``(gggg,eeee) Keyword`` for messages; pydicom is loaded only here."""
    from pydicom.datadict import keyword_for_tag

    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    keyword = keyword_for_tag(tag)
    return f"{text} {keyword}" if keyword else text
