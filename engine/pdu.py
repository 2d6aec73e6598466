"""Encoding and decoding of upper layer PDUs (PS3.8) and DIMSE command sets.

Everything here works on bytes and raises ``ProtocolError`` for input that
breaks PS3.8 or PS3.7; the socket side lives in ``engine.association``. The
C-STORE path builds its bytes with ``struct`` directly and creates no
pydicom or pynetdicom objects, so the per-file cost stays small.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import ProtocolError

# PDU types (PS3.8 section 9.3.1).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

# Item and sub-item types of the A-ASSOCIATE PDUs (PS3.8 sections 9.3.2, 9.3.3
# and PS3.7 Annex D).
ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
ITEM_MAX_LENGTH = 0x51
ITEM_IMPLEMENTATION_CLASS_UID = 0x52
ITEM_IMPLEMENTATION_VERSION_NAME = 0x55

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
PDU_HEADER_LENGTH = 6
PDV_HEADER_LENGTH = 6
# Upper bound on any PDU we accept, so a corrupt length field cannot make us
# allocate gigabytes; P-DATA-TF PDUs are also held to our own max PDU length.
MAX_ACCEPTED_PDU_LENGTH = 16 * 1024 * 1024

# Message control header bits of a PDV (PS3.8 section E.2).
PDV_COMMAND = 0x01
PDV_LAST_FRAGMENT = 0x02

# DIMSE command fields (PS3.7 section E.1).
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
COMMAND_NAMES = {
    0x0001: "C-STORE-RQ", 0x8001: "C-STORE-RSP",
    0x0010: "C-GET-RQ", 0x8010: "C-GET-RSP",
    0x0020: "C-FIND-RQ", 0x8020: "C-FIND-RSP",
    0x0021: "C-MOVE-RQ", 0x8021: "C-MOVE-RSP",
    0x0030: "C-ECHO-RQ", 0x8030: "C-ECHO-RSP",
    0x0FFF: "C-CANCEL-RQ",
    0x0100: "N-EVENT-REPORT-RQ", 0x8100: "N-EVENT-REPORT-RSP",
    0x0110: "N-GET-RQ", 0x8110: "N-GET-RSP",
    0x0120: "N-SET-RQ", 0x8120: "N-SET-RSP",
    0x0130: "N-ACTION-RQ", 0x8130: "N-ACTION-RSP",
    0x0140: "N-CREATE-RQ", 0x8140: "N-CREATE-RSP",
    0x0150: "N-DELETE-RQ", 0x8150: "N-DELETE-RSP",
}
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# Command set element numbers of group 0000 (PS3.7 section E.1).
TAG_GROUP_LENGTH = 0x0000
TAG_AFFECTED_SOP_CLASS_UID = 0x0002
TAG_COMMAND_FIELD = 0x0100
TAG_MESSAGE_ID = 0x0110
TAG_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
TAG_PRIORITY = 0x0700
TAG_COMMAND_DATA_SET_TYPE = 0x0800
TAG_STATUS = 0x0900
TAG_ERROR_COMMENT = 0x0902
TAG_AFFECTED_SOP_INSTANCE_UID = 0x1000

# A-ASSOCIATE-RJ fields in words (PS3.8 table 9-21).
REJECT_RESULTS = {1: "permanent", 2: "transient"}
REJECT_SOURCES = {
    1: "service user",
    2: "service provider (ACSE)",
    3: "service provider (presentation)",
}
REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 0): "reserved reason 0",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}

# A-ABORT fields in words (PS3.8 table 9-26).
ABORT_SOURCES = {0: "service user", 1: "reserved source", 2: "service provider"}
ABORT_REASONS = {
    0: "reason not specified",
    1: "unrecognised PDU",
    2: "unexpected PDU",
    4: "unrecognised PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}

# Presentation context results of the A-ASSOCIATE-AC (PS3.8 table 9-18).
CONTEXT_ACCEPTED = 0
CONTEXT_RESULTS = {
    0: "acceptance",
    1: "user rejection",
    2: "no reason given (provider rejection)",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}

_HEADER = struct.Struct(">BxI")
_ITEM_HEADER = struct.Struct(">BxH")
_PDV_HEADER = struct.Struct(">BxIIBB")
_ELEMENT_HEADER = struct.Struct("<HHI")
_US_ELEMENT = struct.Struct("<HHIH")
# CommandField, MessageID, Priority and CommandDataSetType of a C-STORE-RQ.
_STORE_FIXED = struct.Struct("<" + "HHIH" * 4)
_ECHO_FIXED = struct.Struct("<" + "HHIH" * 3)
_VERIFICATION_UID = VERIFICATION_SOP_CLASS.encode("ascii") + b"\x00"


@dataclass(frozen=True, slots=True)
class AssociateAccept:
    """The fields of an A-ASSOCIATE-AC that the requestor uses.

    ``contexts`` maps each presentation context ID to its result and, when
    accepted, its transfer syntax. ``max_pdu_length`` is 0 when the acceptor
    sets no limit.
    """

    contexts: dict[int, tuple[int, str | None]]
    max_pdu_length: int
    implementation_class_uid: str | None
    implementation_version_name: str | None


@dataclass(frozen=True, slots=True)
class AssociateReject:
    """The result, source and reason fields of an A-ASSOCIATE-RJ."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        """Describe the rejection in words, e.g. ``called AE title not ...``."""
        reason = REJECT_REASONS.get(
            (self.source, self.reason), f"unknown reason {self.reason}"
        )
        result = REJECT_RESULTS.get(self.result, f"unknown result {self.result}")
        source = REJECT_SOURCES.get(self.source, f"unknown source {self.source}")
        return f"{reason} ({result}, source: {source})"


@dataclass(frozen=True, slots=True)
class DimseResponse:
    """The command set fields of a C-STORE-RSP or C-ECHO-RSP."""

    command_field: int
    message_id_being_responded_to: int | None
    status: int | None
    error_comment: str | None
    has_data_set: bool


def describe_abort(source: int, reason: int) -> str:
    """Describe the source and reason of an A-ABORT in words."""
    source_text = ABORT_SOURCES.get(source, f"unknown source {source}")
    if source != 2:
        # The reason field is only significant for a service provider abort.
        return f"source: {source_text}"
    reason_text = ABORT_REASONS.get(reason, f"unknown reason {reason}")
    return f"source: {source_text}, reason: {reason_text}"


def command_name(command_field: int) -> str:
    """Return the DIMSE name of a command field, e.g. ``C-STORE-RSP``."""
    return COMMAND_NAMES.get(command_field, f"command field 0x{command_field:04X}")


# --- A-ASSOCIATE-RQ --------------------------------------------------------


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(item_type, len(value)) + value


def _ae_title_field(option: str, title: str) -> bytes:
    try:
        encoded = title.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"Invalid {option} {title!r}: use ASCII only") from None
    if not encoded or len(encoded) > 16:
        raise ValueError(f"Invalid {option} {title!r}: use 1 to 16 characters")
    return encoded.ljust(16, b" ")


def encode_associate_rq(
    calling_ae_title: str,
    called_ae_title: str,
    contexts: Sequence[tuple[int, str, Sequence[str]]],
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str | None,
) -> bytes:
    """Encode an A-ASSOCIATE-RQ PDU (PS3.8 section 9.3.2).

    Parameters
    ----------
    calling_ae_title, called_ae_title : str
        AE titles of 1 to 16 ASCII characters; they are padded with spaces.
    contexts : sequence of (int, str, sequence of str)
        The presentation contexts as (odd context ID, abstract syntax UID,
        transfer syntax UIDs).
    max_pdu_length : int
        The maximum P-DATA-TF variable field length we can receive; 0 means
        no limit.
    implementation_class_uid : str
        Our implementation class UID.
    implementation_version_name : str or None
        Our implementation version name (1 to 16 characters), or None to send
        none.

    Returns
    -------
    bytes
        The whole PDU.

    Raises
    ------
    ValueError
        If an AE title is not 1 to 16 ASCII characters.
    """
    items = [_item(ITEM_APPLICATION_CONTEXT, APPLICATION_CONTEXT_NAME.encode())]
    for context_id, abstract_syntax, transfer_syntaxes in contexts:
        sub_items = [_item(ITEM_ABSTRACT_SYNTAX, abstract_syntax.encode("ascii"))]
        sub_items.extend(
            _item(ITEM_TRANSFER_SYNTAX, uid.encode("ascii"))
            for uid in transfer_syntaxes
        )
        value = bytes((context_id, 0, 0, 0)) + b"".join(sub_items)
        items.append(_item(ITEM_PRESENTATION_CONTEXT_RQ, value))

    user_items = [
        _item(ITEM_MAX_LENGTH, struct.pack(">I", max_pdu_length)),
        _item(ITEM_IMPLEMENTATION_CLASS_UID, implementation_class_uid.encode()),
    ]
    if implementation_version_name:
        user_items.append(
            _item(ITEM_IMPLEMENTATION_VERSION_NAME,
                  implementation_version_name.encode("ascii"))
        )
    items.append(_item(ITEM_USER_INFORMATION, b"".join(user_items)))

    body = (
        b"\x00\x01\x00\x00"
        + _ae_title_field("called_ae_title", called_ae_title)
        + _ae_title_field("calling_ae_title", calling_ae_title)
        + bytes(32)
        + b"".join(items)
    )
    return _HEADER.pack(A_ASSOCIATE_RQ, len(body)) + body


# --- PDU framing and the fixed-size PDUs -------------------------------------


def parse_pdu_header(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return the type and length of a PDU from its 6 header bytes.

    Raises
    ------
    ProtocolError
        If the PDU type is unknown or the length is impossible for the type.
    """
    pdu_type, length = _HEADER.unpack_from(header)
    if pdu_type not in PDU_NAMES:
        raise ProtocolError(f"Received an unknown PDU type 0x{pdu_type:02X}")
    if pdu_type in (A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
        if length != 4:
            raise ProtocolError(
                f"Received an {PDU_NAMES[pdu_type]} PDU with length {length}, "
                "expected 4"
            )
    elif length > MAX_ACCEPTED_PDU_LENGTH:
        raise ProtocolError(
            f"Received a {PDU_NAMES[pdu_type]} PDU with length {length}, above "
            f"the limit of {MAX_ACCEPTED_PDU_LENGTH} bytes"
        )
    return pdu_type, length


def encode_release_rq() -> bytes:
    """Encode an A-RELEASE-RQ PDU."""
    return _HEADER.pack(A_RELEASE_RQ, 4) + bytes(4)


def encode_release_rp() -> bytes:
    """Encode an A-RELEASE-RP PDU."""
    return _HEADER.pack(A_RELEASE_RP, 4) + bytes(4)


def encode_abort(source: int = 0, reason: int = 0) -> bytes:
    """Encode an A-ABORT PDU; source 0 is the service user, 2 the provider."""
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


def decode_abort(body: bytes) -> tuple[int, int]:
    """Return the (source, reason) of an A-ABORT PDU body."""
    _check_length(body, 4, "A-ABORT")
    return body[2], body[3]


def decode_associate_rj(body: bytes) -> AssociateReject:
    """Decode the body of an A-ASSOCIATE-RJ PDU (after its 6-byte header)."""
    _check_length(body, 4, "A-ASSOCIATE-RJ")
    return AssociateReject(result=body[1], source=body[2], reason=body[3])


def _check_length(body: bytes, expected: int, name: str) -> None:
    if len(body) != expected:
        raise ProtocolError(
            f"Received an {name} PDU with {len(body)} bytes of data, "
            f"expected {expected}"
        )


# --- A-ASSOCIATE-AC --------------------------------------------------------


def _iter_items(
    data: bytes, start: int, end: int, where: str
) -> list[tuple[int, bytes]]:
    items = []
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError(f"Truncated item header in the {where}")
        item_type, length = _ITEM_HEADER.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise ProtocolError(
                f"Item 0x{item_type:02X} in the {where} claims {length} bytes, "
                f"only {end - offset} remain"
            )
        items.append((item_type, data[offset:offset + length]))
        offset += length
    return items


def _decode_uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", errors="replace")


def decode_associate_ac(body: bytes) -> AssociateAccept:
    """Decode the body of an A-ASSOCIATE-AC PDU (after its 6-byte header).

    Raises
    ------
    ProtocolError
        If the PDU is shorter than its fixed fields, an item overruns the PDU,
        or a presentation context item is malformed.
    """
    if len(body) < 68:
        raise ProtocolError(
            f"Received an A-ASSOCIATE-AC PDU of {len(body)} bytes, shorter "
            "than its 68 bytes of fixed fields"
        )

    contexts: dict[int, tuple[int, str | None]] = {}
    max_pdu_length = 0
    class_uid: str | None = None
    version_name: str | None = None
    for item_type, value in _iter_items(body, 68, len(body), "A-ASSOCIATE-AC"):
        if item_type == ITEM_PRESENTATION_CONTEXT_AC:
            if len(value) < 4:
                raise ProtocolError(
                    "Received a presentation context item of "
                    f"{len(value)} bytes in the A-ASSOCIATE-AC"
                )
            transfer_syntax = None
            for sub_type, sub_value in _iter_items(
                    value, 4, len(value), "presentation context item"):
                if sub_type == ITEM_TRANSFER_SYNTAX:
                    transfer_syntax = _decode_uid(sub_value)
            result = value[2]
            if result == CONTEXT_ACCEPTED and not transfer_syntax:
                raise ProtocolError(
                    f"Presentation context {value[0]} was accepted without a "
                    "transfer syntax"
                )
            contexts[value[0]] = (result, transfer_syntax)
        elif item_type == ITEM_USER_INFORMATION:
            for sub_type, sub_value in _iter_items(
                    value, 0, len(value), "user information item"):
                if sub_type == ITEM_MAX_LENGTH:
                    if len(sub_value) != 4:
                        raise ProtocolError(
                            "Received a maximum length sub-item of "
                            f"{len(sub_value)} bytes, expected 4"
                        )
                    max_pdu_length = struct.unpack(">I", sub_value)[0]
                elif sub_type == ITEM_IMPLEMENTATION_CLASS_UID:
                    class_uid = _decode_uid(sub_value)
                elif sub_type == ITEM_IMPLEMENTATION_VERSION_NAME:
                    version_name = sub_value.decode("ascii", errors="replace")
    return AssociateAccept(contexts, max_pdu_length, class_uid, version_name)


# --- P-DATA-TF -------------------------------------------------------------


def pdata_header(context_id: int, control: int, fragment_length: int) -> bytes:
    """Return the 12 bytes that precede one fragment in a one-PDV P-DATA-TF.

    The PDU header (6 bytes) and the PDV item header (4-byte length, context
    ID, message control header) are joined so that a sender can pass header
    and fragment as two buffers to one ``sendmsg`` call.
    """
    return _PDV_HEADER.pack(
        P_DATA_TF, fragment_length + 6, fragment_length + 2, context_id, control
    )


def max_fragment_length(peer_max_pdu_length: int, default: int) -> int:
    """Return the data bytes per PDV for a peer's maximum PDU length.

    The peer's value bounds the PDU's variable field, which contains one PDV
    with 6 header bytes. A value of 0 means no limit, and then ``default`` is
    used.
    """
    if peer_max_pdu_length == 0:
        return default
    return peer_max_pdu_length - PDV_HEADER_LENGTH


def encode_pdata(
    context_id: int,
    data: bytes | memoryview,
    is_command: bool,
    peer_max_pdu_length: int,
) -> bytes:
    """Encode a whole command set or data set as P-DATA-TF PDUs of one PDV each.

    The last PDV has the last-fragment bit set. Used for command sets and
    tests; the C-STORE data path frames its buffers without joining them.
    """
    fragment = max_fragment_length(peer_max_pdu_length, max(len(data), 1))
    base = PDV_COMMAND if is_command else 0
    view = memoryview(data)
    parts = []
    for start in range(0, max(len(view), 1), fragment):
        chunk = view[start:start + fragment]
        last = start + fragment >= len(view)
        control = base | (PDV_LAST_FRAGMENT if last else 0)
        parts.append(pdata_header(context_id, control, len(chunk)))
        parts.append(bytes(chunk))
    return b"".join(parts)


def decode_pdata(body: bytes) -> list[tuple[int, int, bytes]]:
    """Split a P-DATA-TF body into its PDVs as (context ID, control, data).

    Raises
    ------
    ProtocolError
        If a PDV item is shorter than 2 bytes or overruns the PDU.
    """
    pdvs = []
    offset = 0
    end = len(body)
    while offset < end:
        if offset + 6 > end:
            raise ProtocolError("Truncated PDV item header in a P-DATA-TF PDU")
        length = int.from_bytes(body[offset:offset + 4], "big")
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(
                f"PDV item length {length} does not fit the P-DATA-TF PDU "
                f"({end - offset - 4} bytes remain)"
            )
        pdvs.append(
            (body[offset + 4], body[offset + 5],
             body[offset + 6:offset + 4 + length])
        )
        offset += 4 + length
    if not pdvs:
        raise ProtocolError("Received a P-DATA-TF PDU without any PDV item")
    return pdvs


# --- DIMSE command sets ----------------------------------------------------


def _uid_value(uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return value


def _with_group_length(body: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0, TAG_GROUP_LENGTH, 4) + struct.pack(
        "<I", len(body)) + body


def encode_c_store_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, priority: int = 0
) -> bytes:
    """Encode a C-STORE-RQ command set (Implicit VR Little Endian, group 0000).

    Parameters
    ----------
    message_id : int
        The Message ID, 0 to 65535.
    sop_class_uid, sop_instance_uid : str
        The Affected SOP Class UID and Affected SOP Instance UID.
    priority : int
        0 medium, 1 high, 2 low.

    Returns
    -------
    bytes
        The command set, starting with its CommandGroupLength element.
    """
    class_value = _uid_value(sop_class_uid)
    instance_value = _uid_value(sop_instance_uid)
    body = b"".join((
        _ELEMENT_HEADER.pack(0, TAG_AFFECTED_SOP_CLASS_UID, len(class_value)),
        class_value,
        _STORE_FIXED.pack(
            0, TAG_COMMAND_FIELD, 2, C_STORE_RQ,
            0, TAG_MESSAGE_ID, 2, message_id,
            0, TAG_PRIORITY, 2, priority,
            0, TAG_COMMAND_DATA_SET_TYPE, 2, DATA_SET_PRESENT,
        ),
        _ELEMENT_HEADER.pack(0, TAG_AFFECTED_SOP_INSTANCE_UID, len(instance_value)),
        instance_value,
    ))
    return _with_group_length(body)


def encode_c_echo_rq(message_id: int) -> bytes:
    """Encode a C-ECHO-RQ command set for the Verification SOP class."""
    body = (
        _ELEMENT_HEADER.pack(0, TAG_AFFECTED_SOP_CLASS_UID, len(_VERIFICATION_UID))
        + _VERIFICATION_UID
        + _ECHO_FIXED.pack(
            0, TAG_COMMAND_FIELD, 2, C_ECHO_RQ,
            0, TAG_MESSAGE_ID, 2, message_id,
            0, TAG_COMMAND_DATA_SET_TYPE, 2, NO_DATA_SET,
        )
    )
    return _with_group_length(body)


def decode_command_set(data: bytes) -> dict[int, bytes]:
    """Split an Implicit VR Little Endian command set into element -> value.

    Raises
    ------
    ProtocolError
        If an element is outside group 0000 or overruns the data.
    """
    elements: dict[int, bytes] = {}
    offset = 0
    end = len(data)
    while offset < end:
        if offset + 8 > end:
            raise ProtocolError("Truncated element header in a DIMSE command set")
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += 8
        if group != 0:
            raise ProtocolError(
                f"Element ({group:04X},{element:04X}) in a DIMSE command set is "
                "outside group 0000"
            )
        if offset + length > end:
            raise ProtocolError(
                f"Element (0000,{element:04X}) in a DIMSE command set claims "
                f"{length} bytes, only {end - offset} remain"
            )
        elements[element] = data[offset:offset + length]
        offset += length
    return elements


def _us(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    if value is None:
        return None
    if len(value) != 2:
        raise ProtocolError(
            f"Element (0000,{element:04X}) in a DIMSE command set has "
            f"{len(value)} bytes, expected 2"
        )
    return int.from_bytes(value, "little")


def decode_response(data: bytes) -> DimseResponse:
    """Decode the command set of a DIMSE response.

    Raises
    ------
    ProtocolError
        If the command set is malformed or has no CommandField.
    """
    elements = decode_command_set(data)
    command_field = _us(elements, TAG_COMMAND_FIELD)
    if command_field is None:
        raise ProtocolError("Received a DIMSE command set without a CommandField")
    comment = elements.get(TAG_ERROR_COMMENT)
    error_comment = None
    if comment:
        error_comment = comment.rstrip(b"\x00 ").decode("ascii", errors="replace")
    data_set_type = _us(elements, TAG_COMMAND_DATA_SET_TYPE)
    return DimseResponse(
        command_field=command_field,
        message_id_being_responded_to=_us(
            elements, TAG_MESSAGE_ID_BEING_RESPONDED_TO),
        status=_us(elements, TAG_STATUS),
        error_comment=error_comment,
        has_data_set=data_set_type is not None and data_set_type != NO_DATA_SET,
    )
