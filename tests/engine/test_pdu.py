"""Tests of engine.pdu: our bytes against pynetdicom's encoders, and bad input."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    A_P_ABORT,
    A_RELEASE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from engine import pdu
from engine.errors import ProtocolError

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
OUR_CLASS_UID = "2.25.14631631606801446483640040532608070738"


def _user_information(max_length: int, class_uid: str,
                      version: str | None) -> list[object]:
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_length
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = class_uid
    items: list[object] = [maximum, implementation]
    if version is not None:
        name = ImplementationVersionNameNotification()
        name.implementation_version_name = version
        items.append(name)
    return items


def _context(context_id: int, abstract: str, transfers: list[str],
             result: int | None = None) -> PresentationContext:
    context = PresentationContext()
    context.context_id = context_id
    context.abstract_syntax = abstract
    context.transfer_syntax = transfers
    if result is not None:
        context.result = result
    return context


def _pynetdicom_pdata(message: object, primitive: object, context_id: int,
                      max_pdu: int) -> bytes:
    message.primitive_to_message(primitive)  # type: ignore[attr-defined]
    encoded = []
    for p_data in message.encode_msg(context_id, max_pdu):  # type: ignore[attr-defined]
        tf = P_DATA_TF()
        tf.from_primitive(p_data)
        encoded.append(tf.encode())
    return b"".join(encoded)


# --- A-ASSOCIATE-RQ ----------------------------------------------------------


@pytest.mark.parametrize("version", ["DICOMSEND_010", None])
def test_associate_rq_matches_pynetdicom(version: str | None) -> None:
    """Our A-ASSOCIATE-RQ equals pynetdicom's for the same contexts and user info."""
    contexts = [
        (1, CT_IMAGE, [EXPLICIT, IMPLICIT]),
        (3, MR_IMAGE, [JPEG_LOSSLESS]),
        (5, "1.2.840.10008.1.1", [IMPLICIT]),
    ]
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORE-SCU"
    primitive.called_ae_title = "ANY-SCP"
    primitive.presentation_context_definition_list = [
        _context(cid, abstract, transfers) for cid, abstract, transfers in contexts
    ]
    primitive.user_information = _user_information(16384, OUR_CLASS_UID, version)
    expected = A_ASSOCIATE_RQ()
    expected.from_primitive(primitive)

    ours = pdu.encode_associate_rq(
        "STORE-SCU", "ANY-SCP", contexts, 16384, OUR_CLASS_UID, version
    )

    assert ours == expected.encode()


def test_associate_rq_with_128_contexts_matches_pynetdicom() -> None:
    """The largest A-ASSOCIATE-RQ (128 contexts, IDs 1 to 255) matches too."""
    contexts = [(2 * i + 1, f"1.2.3.{i}", [EXPLICIT, IMPLICIT]) for i in range(128)]
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "A"
    primitive.called_ae_title = "SIXTEEN-CHARS-AE"
    primitive.presentation_context_definition_list = [
        _context(cid, abstract, transfers) for cid, abstract, transfers in contexts
    ]
    primitive.user_information = _user_information(0, OUR_CLASS_UID, "X")
    expected = A_ASSOCIATE_RQ()
    expected.from_primitive(primitive)

    ours = pdu.encode_associate_rq(
        "A", "SIXTEEN-CHARS-AE", contexts, 0, OUR_CLASS_UID, "X"
    )

    assert ours == expected.encode()


@pytest.mark.parametrize("title", ["", "SEVENTEEN-CHARS-X", "ÄE"])
def test_associate_rq_invalid_ae_title(title: str) -> None:
    """An AE title that cannot fill the 16-byte field raises ValueError."""
    with pytest.raises(ValueError, match="Invalid called_ae_title"):
        pdu.encode_associate_rq("SCU", title, [(1, CT_IMAGE, [IMPLICIT])], 0,
                                OUR_CLASS_UID, None)


# --- A-ASSOCIATE-AC and -RJ --------------------------------------------------


def _pynetdicom_ac(results: list[tuple[int, int, str]], max_length: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORE-SCU"
    primitive.called_ae_title = "ANY-SCP"
    primitive.result = 0
    primitive.presentation_context_definition_results_list = [
        _context(cid, CT_IMAGE, [transfer], result)
        for cid, result, transfer in results
    ]
    primitive.user_information = _user_information(
        max_length, "1.2.276.0.7230010.3.0.3.6.7", "OFFIS_DCMTK_367"
    )
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(primitive)
    return bytes(ac.encode())


def test_decode_associate_ac_from_pynetdicom() -> None:
    """Context results, max PDU length and implementation fields are decoded."""
    encoded = _pynetdicom_ac(
        [(1, 0, EXPLICIT), (3, 3, IMPLICIT), (5, 4, IMPLICIT), (7, 1, IMPLICIT)],
        32768,
    )
    pdu_type, length = pdu.parse_pdu_header(encoded)

    accept = pdu.decode_associate_ac(encoded[6:])

    assert pdu_type == pdu.A_ASSOCIATE_AC
    assert length == len(encoded) - 6
    assert accept.contexts[1] == (0, EXPLICIT)
    assert accept.contexts[3][0] == 3
    assert accept.contexts[5][0] == 4
    assert accept.contexts[7][0] == 1
    assert accept.max_pdu_length == 32768
    assert accept.implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    assert accept.implementation_version_name == "OFFIS_DCMTK_367"


@pytest.mark.parametrize(
    ("result", "source", "reason", "words"),
    [
        (1, 1, 7, "called AE title not recognised (permanent, source: service user)"),
        (1, 1, 3, "calling AE title not recognised (permanent"),
        (1, 1, 1, "no reason given (permanent, source: service user)"),
        (2, 3, 1, "temporary congestion (transient, source: service provider "
                  "(presentation))"),
        (2, 3, 2, "local limit exceeded (transient"),
        (1, 2, 2, "protocol version not supported (permanent, source: service "
                  "provider (ACSE))"),
    ],
)
def test_decode_associate_rj_from_pynetdicom(
    result: int, source: int, reason: int, words: str
) -> None:
    """A-ASSOCIATE-RJ fields are decoded and described as PS3.8 names them."""
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    rj = A_ASSOCIATE_RJ()
    rj.from_primitive(primitive)
    encoded = bytes(rj.encode())

    pdu_type, _ = pdu.parse_pdu_header(encoded)
    reject = pdu.decode_associate_rj(encoded[6:])

    assert pdu_type == pdu.A_ASSOCIATE_RJ
    assert (reject.result, reject.source, reject.reason) == (result, source, reason)
    assert reject.describe().startswith(words)


# --- A-RELEASE and A-ABORT ---------------------------------------------------


def test_release_pdus_match_pynetdicom() -> None:
    """A-RELEASE-RQ and A-RELEASE-RP are byte for byte pynetdicom's."""
    request = A_RELEASE_RQ()
    request.from_primitive(A_RELEASE())
    reply_primitive = A_RELEASE()
    reply_primitive.result = "affirmative"
    reply = A_RELEASE_RP()
    reply.from_primitive(reply_primitive)

    assert pdu.encode_release_rq() == request.encode()
    assert pdu.encode_release_rp() == reply.encode()


def test_abort_matches_pynetdicom() -> None:
    """A user A-ABORT and a provider A-P-ABORT match pynetdicom's bytes."""
    user = A_ABORT_RQ()
    user_primitive = A_ABORT()
    user_primitive.abort_source = 0
    user.from_primitive(user_primitive)
    provider = A_ABORT_RQ()
    provider_primitive = A_P_ABORT()
    provider_primitive.provider_reason = 2
    provider.from_primitive(provider_primitive)

    assert pdu.encode_abort(0, 0) == user.encode()
    assert pdu.encode_abort(2, 2) == provider.encode()
    assert pdu.decode_abort(bytes(provider.encode())[6:]) == (2, 2)
    assert pdu.describe_abort(2, 2) == (
        "source: service provider, reason: unexpected PDU")
    assert pdu.describe_abort(0, 0) == "source: service user"


# --- P-DATA-TF and command sets ----------------------------------------------


@pytest.mark.parametrize("max_pdu", [4096, 16384, 0])
@pytest.mark.parametrize("data_length", [0, 1, 4090, 4091, 50_001])
def test_c_store_rq_pdata_matches_pynetdicom(max_pdu: int, data_length: int) -> None:
    """Command set and data set framing equal pynetdicom's for many sizes."""
    data = bytes(range(256)) * (data_length // 256) + bytes(data_length % 256)
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT_IMAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    primitive.Priority = 2
    primitive.DataSet = BytesIO(data)
    expected = _pynetdicom_pdata(C_STORE_RQ(), primitive, 3, max_pdu)

    command = pdu.encode_c_store_rq(7, CT_IMAGE, "1.2.826.0.1.3680043.8.498.1", 2)
    ours = pdu.encode_pdata(3, command, True, max_pdu)
    if data:
        ours += pdu.encode_pdata(3, data, False, max_pdu)

    assert ours == expected


def test_c_store_rq_odd_uid_is_padded() -> None:
    """An odd-length UID gets one NUL byte and the group length counts it."""
    command = pdu.encode_c_store_rq(65535, "1.2.3", "1.2.34")
    elements = pdu.decode_command_set(command)

    assert elements[pdu.TAG_AFFECTED_SOP_CLASS_UID] == b"1.2.3\x00"
    assert elements[pdu.TAG_AFFECTED_SOP_INSTANCE_UID] == b"1.2.34"
    assert struct.unpack("<I", elements[pdu.TAG_GROUP_LENGTH])[0] == len(command) - 12
    assert elements[pdu.TAG_MESSAGE_ID] == b"\xff\xff"


def test_c_echo_rq_matches_pynetdicom() -> None:
    """The C-ECHO-RQ command set equals pynetdicom's."""
    primitive = C_ECHO()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    expected = _pynetdicom_pdata(C_ECHO_RQ(), primitive, 1, 16384)

    ours = pdu.encode_pdata(1, pdu.encode_c_echo_rq(12), True, 16384)

    assert ours == expected


def _decode_pdata_stream(stream: bytes) -> tuple[list[int], bytes]:
    """Split a stream of P-DATA-TF PDUs; return the control bytes and the data."""
    controls = []
    data = b""
    offset = 0
    while offset < len(stream):
        pdu_type, length = pdu.parse_pdu_header(stream[offset:offset + 6])
        assert pdu_type == pdu.P_DATA_TF
        body = stream[offset + 6:offset + 6 + length]
        for _, control, value in pdu.decode_pdata(body):
            controls.append(control)
            data += value
        offset += 6 + length
    return controls, data


def test_decode_c_store_rsp_from_pynetdicom() -> None:
    """Status, message ID and error comment of a C-STORE-RSP are decoded."""
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = CT_IMAGE
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    primitive.Status = 0xA700
    primitive.ErrorComment = "Disk full"
    encoded = _pynetdicom_pdata(C_STORE_RSP(), primitive, 1, 16384)

    controls, command = _decode_pdata_stream(encoded)
    response = pdu.decode_response(command)

    assert controls == [pdu.PDV_COMMAND | pdu.PDV_LAST_FRAGMENT]
    assert response.command_field == pdu.C_STORE_RSP
    assert response.message_id_being_responded_to == 9
    assert response.status == 0xA700
    assert response.error_comment == "Disk full"
    assert response.has_data_set is False


def test_decode_c_echo_rsp_from_pynetdicom() -> None:
    """A C-ECHO-RSP decodes with its status and no error comment."""
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    primitive.Status = 0x0000
    encoded = _pynetdicom_pdata(C_ECHO_RSP(), primitive, 1, 16384)

    _, command = _decode_pdata_stream(encoded)
    response = pdu.decode_response(command)

    assert response.command_field == pdu.C_ECHO_RSP
    assert response.status == 0
    assert response.error_comment is None


# --- malformed input ---------------------------------------------------------


def test_unknown_pdu_type_raises() -> None:
    """A PDU type outside 0x01-0x07 is a protocol error."""
    with pytest.raises(ProtocolError, match="unknown PDU type 0x09"):
        pdu.parse_pdu_header(b"\x09\x00\x00\x00\x00\x04")


@pytest.mark.parametrize("pdu_type", [0x03, 0x05, 0x06, 0x07])
def test_fixed_size_pdu_bad_length_raises(pdu_type: int) -> None:
    """RJ, release and abort PDUs must have length 4."""
    with pytest.raises(ProtocolError, match="expected 4"):
        pdu.parse_pdu_header(bytes((pdu_type, 0, 0, 0, 0, 5)))


def test_huge_pdu_length_raises() -> None:
    """A length field above the sanity limit is a protocol error."""
    with pytest.raises(ProtocolError, match="above the limit"):
        pdu.parse_pdu_header(b"\x04\x00\xff\xff\xff\xff")


def test_truncated_associate_ac_raises() -> None:
    """An A-ASSOCIATE-AC shorter than its fixed fields is rejected."""
    encoded = _pynetdicom_ac([(1, 0, EXPLICIT)], 16384)
    with pytest.raises(ProtocolError, match="shorter than its 68 bytes"):
        pdu.decode_associate_ac(encoded[6:50])


def test_associate_ac_item_overrun_raises() -> None:
    """An item whose length runs past the end of the PDU is rejected."""
    encoded = _pynetdicom_ac([(1, 0, EXPLICIT)], 16384)
    with pytest.raises(ProtocolError, match="only .* remain"):
        pdu.decode_associate_ac(encoded[6:-3])


def test_accepted_context_without_transfer_syntax_raises() -> None:
    """An accepted context must name its transfer syntax."""
    body = bytes(68) + b"\x21\x00\x00\x04\x01\x00\x00\x00"
    with pytest.raises(ProtocolError, match="without a transfer syntax"):
        pdu.decode_associate_ac(body)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "without any PDV"),
        (b"\x00\x00\x00", "Truncated PDV"),
        (b"\x00\x00\x00\x01\x01\x03", "does not fit"),
        (b"\x00\x00\x00\x10\x01\x03abc", "does not fit"),
    ],
)
def test_bad_pdv_raises(body: bytes, match: str) -> None:
    """PDV items with impossible lengths are protocol errors."""
    with pytest.raises(ProtocolError, match=match):
        pdu.decode_pdata(body)


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (b"\x00\x00\x00\x01", "Truncated element header"),
        (b"\x08\x00\x16\x00\x02\x00\x00\x00ab", "outside group 0000"),
        (b"\x00\x00\x00\x01\x02\x00\x00\x00\x01", "claims 2 bytes"),
        (b"\x00\x00\x20\x01\x02\x00\x00\x00\x01\x00", "without a CommandField"),
        (b"\x00\x00\x00\x01\x04\x00\x00\x00\x01\x80\x00\x00", "expected 2"),
    ],
)
def test_bad_command_set_raises(command: bytes, match: str) -> None:
    """Malformed command sets raise ProtocolError naming the problem."""
    with pytest.raises(ProtocolError, match=match):
        pdu.decode_response(command)
