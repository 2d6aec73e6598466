"""Storage commitment (Push Model, PS3.4 Annex J) as an SCU, built on pynetdicom.

After a batch is stored, :func:`commit_instances` sends an N-ACTION-RQ
(Action Type ID 1, "Request Storage Commitment") so that the receiver takes
responsibility for a list of SOP instances. It then waits for the
N-EVENT-REPORT-RQ that lists which instances the receiver committed and
which it did not, with a Failure Reason for each.

The receiver sends the report either on the association that carried the
N-ACTION, while that is still open, or on a new association it opens back
to us. The second case needs a listening port that the receiver has been
configured with (our AE title, host and port), so ``listen_port`` is an
option and not picked at random. This module waits for the report on both.

pynetdicom is used here rather than ``engine.association``: commitment is
one request per batch, so it is not on the hot path, and pynetdicom already
serves the incoming association. pynetdicom 3.0.x drops a response now and
then in its reactor thread, so the guard of ``engine.pynetdicom_guard`` is
installed before the first request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.errors import (
    AssociationAbortedError,
    AssociationError,
    AssociationRejectedError,
    ConnectionFailedError,
    DicomSendError,
)
from engine.options import Address, Timeouts, parse_address, validate_ae_title
from engine.statuses import StatusCategory, describe_status

if TYPE_CHECKING:
    from engine.options import SendOptions
    from engine.reports import Report
    from engine.result import SendResult

logger = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID of the N-ACTION-RQ
EVENT_ALL_COMMITTED = 1  # Event Type ID: storage commitment request successful
EVENT_FAILURES_EXIST = 2  # Event Type ID: storage commitment failures exist
DEFAULT_REPORT_TIMEOUT = 60.0

# Failure Reason (0008,1197) values of PS3.4 section J.3.3.1.2; the others
# are general DIMSE status codes, named by engine.statuses.
FAILURE_REASONS: dict[int, str] = {
    0x0110: "Processing failure",
    0x0112: "No such object instance",
    0x0119: "Class / Instance conflict",
    0x0122: "Referenced SOP Class not supported",
    0x0131: "Duplicate transaction UID",
    0x0213: "Resource limitation",
}


class CommitmentError(DicomSendError):
    """The receiver did not accept the storage commitment request itself."""


@dataclass(frozen=True, slots=True)
class InstanceReference:
    """One SOP instance, as the Referenced SOP Sequence lists it."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class CommitFailure:
    """An instance the receiver did not commit, with the reason in words.

    ``failure_reason`` is the (0008,1197) Failure Reason code, or None when
    the receiver gave no report or left the instance out of it.
    """

    sop_class_uid: str
    sop_instance_uid: str
    reason: str
    failure_reason: int | None = None


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """The receiver's report on one storage commitment request.

    Every requested instance is either in ``committed`` or in ``failures``.
    ``report_received`` is False when no N-EVENT-REPORT arrived in time; all
    instances are then in ``failures``. ``report_association`` says where the
    report came: ``"same"`` (the N-ACTION's association), ``"new"`` (one the
    receiver opened to our listening port) or None.
    """

    transaction_uid: str
    committed: tuple[InstanceReference, ...]
    failures: tuple[CommitFailure, ...]
    report_received: bool
    report_association: str | None = None

    @property
    def all_committed(self) -> bool:
        return not self.failures


def commit_instances(
    address: Address | str,
    calling_ae_title: str,
    called_ae_title: str,
    instances: Iterable[tuple[str, str]],
    timeouts: Timeouts | None = None,
    listen_port: int | None = None,
    *,
    listen_host: str = "127.0.0.1",
    report_timeout: float = DEFAULT_REPORT_TIMEOUT,
) -> CommitmentResult:
    """Ask the receiver to commit ``instances`` and wait for its report.

    Parameters
    ----------
    address : Address or str
        The receiver, as ``StoreScu`` takes it (``host:port``).
    calling_ae_title, called_ae_title : str
        Our AE title and the receiver's. The receiver looks ours up to find
        where to send a report on a new association.
    instances : iterable of (str, str)
        The (SOP Class UID, SOP Instance UID) pairs to commit.
    timeouts : Timeouts, optional
        The connect, ACSE, DIMSE and network timeouts of the association.
    listen_port : int, optional
        Listen on this TCP port for a report sent on a new association, as
        the receiver is configured to send it. None waits for the report on
        the N-ACTION's association only.
    listen_host : str
        The address to listen on. Default 127.0.0.1; a receiver on another
        machine needs ``0.0.0.0`` or this machine's address.
    report_timeout : float
        Seconds to wait for the N-EVENT-REPORT after the N-ACTION response.

    Returns
    -------
    CommitmentResult
        Which instances the receiver committed and why the others were not.

    Raises
    ------
    ValueError
        If an AE title, the address or a port is invalid, or ``instances``
        is empty.
    ConnectionFailedError
        If no association could be opened, or ``listen_port`` is in use.
    AssociationRejectedError
        If the receiver rejected the association.
    AssociationAbortedError
        If the association was aborted before the N-ACTION response.
    CommitmentError
        If the receiver does not support the Storage Commitment Push Model
        or responded to the N-ACTION with a failure status.
    """
    from pydicom.uid import generate_uid

    from engine.pynetdicom_guard import install_reactor_guard

    if isinstance(address, str):
        address = parse_address(address)
    calling_ae_title = validate_ae_title("calling_ae_title", calling_ae_title)
    called_ae_title = validate_ae_title("called_ae_title", called_ae_title)
    requested = _unique_references(instances)
    if not requested:
        raise ValueError("Invalid instances: expected at least one (SOP Class UID, "
                         "SOP Instance UID) pair to commit")
    listen_port = validate_listen_port("listen_port", listen_port)
    timeouts = timeouts or Timeouts()

    install_reactor_guard()
    transaction_uid = str(generate_uid(prefix=None))
    waiter = _ReportWaiter(transaction_uid)
    ae = _application_entity(calling_ae_title, timeouts)
    server = None
    try:
        if listen_port is not None:
            server = _start_listener(ae, waiter, listen_host, listen_port)
        _request_commitment(ae, address, called_ae_title, requested,
                            transaction_uid, waiter, report_timeout)
    finally:
        if server is not None:
            server.shutdown()
        ae.shutdown()

    return waiter.result(requested, report_timeout)


def validate_listen_port(option: str, port: object) -> int | None:
    """Return ``port`` if it is None or a TCP port number, else raise ValueError."""
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"Invalid {option} {port!r}: the port must be a number "
                         "from 1 to 65535")
    return port


def _unique_references(instances: Iterable[tuple[str, str]]) -> list[InstanceReference]:
    references = (InstanceReference(str(sop_class), str(sop_instance))
                  for sop_class, sop_instance in instances)
    return list(dict.fromkeys(references))


def _application_entity(calling_ae_title: str, timeouts: Timeouts) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse if timeouts.acse is not None else 60
    ae.dimse_timeout = timeouts.dimse if timeouts.dimse is not None else 60
    ae.network_timeout = timeouts.network if timeouts.network is not None else 60
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    return ae


def _start_listener(ae: Any, waiter: _ReportWaiter, host: str, port: int) -> Any:
    """Accept the association a receiver opens to send the report."""
    from pynetdicom import evt

    # The receiver takes the SCP role on that association (PS3.4 J.3.3), and
    # some propose it with SCP/SCU role selection; accept either role.
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True,
                             scp_role=True)
    ae.require_called_aet = False
    try:
        server = ae.start_server(
            (host, port), block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, waiter.handle_new_association)],
        )
    except OSError as exc:
        raise ConnectionFailedError(
            f"Unable to listen on {host}:{port} for the storage commitment report: "
            f"{exc.strerror or exc}; choose another listening port"
        ) from exc
    logger.info("Listening on %s:%d for the storage commitment report", host, port)
    return server


def _request_commitment(
    ae: Any,
    address: Address,
    called_ae_title: str,
    requested: list[InstanceReference],
    transaction_uid: str,
    waiter: _ReportWaiter,
    report_timeout: float,
) -> None:
    """Send the N-ACTION-RQ, then wait for the report while the association lasts."""
    from pynetdicom import evt

    # Open the association, with the report handler bound to it in case the
    # receiver sends the report on it.
    association = ae.associate(
        address.host, address.port, ae_title=called_ae_title,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, waiter.handle_same_association)],
    )
    if not association.is_established:
        _raise_association_failure(association, address)

    try:
        # Check the receiver accepted the Storage Commitment Push Model.
        if not any(context.abstract_syntax == STORAGE_COMMITMENT_PUSH_MODEL
                   for context in association.accepted_contexts):
            raise CommitmentError(
                f"Unable to request storage commitment from {address} as it "
                "rejected the Storage Commitment Push Model SOP class; ask its "
                "administrator to enable storage commitment"
            )

        # Send the N-ACTION-RQ and check its status.
        logger.info("Requesting storage commitment of %d instances from %s "
                    "(transaction %s)", len(requested), address, transaction_uid)
        status, _reply = association.send_n_action(
            _action_information(transaction_uid, requested),
            REQUEST_STORAGE_COMMITMENT,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
        )
        _check_action_status(status, address)

        # Wait for the N-EVENT-REPORT: on this association while it stays
        # open, or on a new one (handled by the listener's threads).
        waiter.received.wait(report_timeout)
    finally:
        if association.is_established:
            association.release()


def _raise_association_failure(association: Any, address: Address) -> None:
    if association.is_rejected:
        primitive = association.acceptor.primitive
        detail = ""
        if primitive is not None and getattr(primitive, "result_str", None):
            detail = (f" ({primitive.result_str}, {primitive.source_str}: "
                      f"{primitive.reason_str})")
        raise AssociationRejectedError(
            f"The receiver at {address} rejected the storage commitment "
            f"association{detail}; check the called and calling AE titles",
            int(getattr(primitive, "result", 1) or 1),
            int(getattr(primitive, "result_source", 1) or 1),
            int(getattr(primitive, "diagnostic", 1) or 1),
        )
    primitive = association.acceptor.primitive
    if primitive is not None and primitive.result == 0x00:
        # pynetdicom aborts an accepted association without usable contexts.
        raise CommitmentError(
            f"Unable to request storage commitment from {address} as it "
            "rejected the Storage Commitment Push Model SOP class; ask its "
            "administrator to enable storage commitment"
        )
    if association.is_aborted and primitive is not None:
        raise AssociationAbortedError(
            f"The receiver at {address} aborted the storage commitment association "
            "while it was being negotiated"
        )
    raise ConnectionFailedError(
        f"Unable to request storage commitment as we could not establish "
        f"association with {address}; check that the receiver is running"
    )


def _action_information(
    transaction_uid: str, requested: list[InstanceReference]
) -> Any:
    from pydicom.dataset import Dataset

    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    items = []
    for reference in requested:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        items.append(item)
    dataset.ReferencedSOPSequence = items
    return dataset


def _check_action_status(status: Any, address: Address) -> None:
    """Raise unless the N-ACTION-RSP has a success or warning status."""
    if "Status" not in status:
        raise AssociationAbortedError(
            f"Unable to request storage commitment from {address} as the "
            "association broke or timed out before the N-ACTION response"
        )
    code = int(status.Status)
    category, meaning = describe_status(code)
    if category in (StatusCategory.SUCCESS, StatusCategory.WARNING):
        return
    comment = status.get("ErrorComment")
    raise CommitmentError(
        f"The receiver at {address} rejected the storage commitment request: "
        f"{meaning} (0x{code:04X}){': ' + str(comment) if comment else ''}"
    )


def describe_failure_reason(code: int) -> str:
    """Return the meaning of a (0008,1197) Failure Reason code."""
    meaning = FAILURE_REASONS.get(code) or describe_status(code)[1]
    return f"{meaning} (0x{code:04X})"


class _ReportWaiter:
    """The N-EVENT-REPORT of one transaction, set by whichever thread gets it."""

    def __init__(self, transaction_uid: str) -> None:
        self.transaction_uid = transaction_uid
        self.received = threading.Event()
        self.lock = threading.Lock()
        self.event_type: int | None = None
        self.information: Any = None
        self.where: str | None = None

    def handle_same_association(self, event: Any) -> tuple[int, None]:
        return self._handle(event, "same")

    def handle_new_association(self, event: Any) -> tuple[int, None]:
        return self._handle(event, "new")

    def _handle(self, event: Any, where: str) -> tuple[int, None]:
        """Keep the report if it is for our transaction; return the status."""
        request = event.request
        if request.AffectedSOPClassUID != STORAGE_COMMITMENT_PUSH_MODEL:
            return 0x0118, None  # No such SOP class
        information = event.event_information
        transaction = str(information.get("TransactionUID", ""))
        if transaction != self.transaction_uid:
            logger.warning("Ignoring a storage commitment report for another "
                           "transaction (%s)", transaction or "none given")
            return 0x0119, None  # Class-instance conflict
        with self.lock:
            if not self.received.is_set():
                self.event_type = int(request.EventTypeID or 0)
                self.information = information
                self.where = where
                self.received.set()
        logger.info("Received the storage commitment report on the %s association",
                    where)
        return 0x0000, None

    def result(self, requested: list[InstanceReference],
               timeout: float) -> CommitmentResult:
        if not self.received.is_set():
            reason = (f"no storage commitment report arrived within {timeout:g} s; "
                      "check that the receiver knows our AE title, host and "
                      "listening port")
            logger.error("%s", reason[0].upper() + reason[1:])
            return CommitmentResult(
                self.transaction_uid, (),
                tuple(CommitFailure(ref.sop_class_uid, ref.sop_instance_uid, reason)
                      for ref in requested),
                report_received=False,
            )
        return _read_report(self.transaction_uid, requested, self.information,
                            self.where)


def _read_report(
    transaction_uid: str,
    requested: list[InstanceReference],
    information: Any,
    where: str | None,
) -> CommitmentResult:
    """Sort every requested instance into committed or failed, with the reason."""
    committed: dict[InstanceReference, None] = {}
    failed: dict[InstanceReference, CommitFailure] = {}
    requested_set = set(requested)

    for item in information.get("ReferencedSOPSequence", []):
        reference = InstanceReference(str(item.get("ReferencedSOPClassUID", "")),
                                      str(item.get("ReferencedSOPInstanceUID", "")))
        if reference in requested_set:
            committed[reference] = None
    for item in information.get("FailedSOPSequence", []):
        reference = InstanceReference(str(item.get("ReferencedSOPClassUID", "")),
                                      str(item.get("ReferencedSOPInstanceUID", "")))
        if reference not in requested_set:
            continue
        code = item.get("FailureReason")
        reason = ("the receiver did not commit it: "
                  + (describe_failure_reason(int(code)) if code is not None
                     else "no Failure Reason given"))
        failed[reference] = CommitFailure(reference.sop_class_uid,
                                          reference.sop_instance_uid, reason,
                                          int(code) if code is not None else None)
        committed.pop(reference, None)

    for reference in requested:
        if reference not in committed and reference not in failed:
            failed[reference] = CommitFailure(
                reference.sop_class_uid, reference.sop_instance_uid,
                "the receiver left it out of its storage commitment report",
            )

    result = CommitmentResult(
        transaction_uid,
        tuple(ref for ref in requested if ref in committed),
        tuple(failed[ref] for ref in requested if ref in failed),
        report_received=True,
        report_association=where,
    )
    logger.info("The receiver committed %d of %d instances", len(result.committed),
                len(requested))
    return result


def commit_stored_files(
    result: SendResult,
    report: Report,
    options: SendOptions,
    listen_port: int | None,
    report_timeout: float = DEFAULT_REPORT_TIMEOUT,
    listen_host: str = "127.0.0.1",
) -> SendResult:
    """Ask the receiver to commit the files ``report`` shows as stored.

    Each stored file gets a commitment record in ``report``. Files the
    receiver did not commit, for any reason including a failed request, move
    from ``successful`` to ``failed`` with the reason in ``failures``.
    Returns ``result`` updated that way, with ``commitment`` set when the
    receiver responded to the request.
    """
    from engine.reports import Outcome, commitment_records
    from engine.result import FailedFile

    stored = [record for record in report.records if record.outcome is Outcome.STORED]
    if not stored:
        return result
    pairs = [(record.sop_class_uid or "", record.sop_instance_uid or "")
             for record in stored]

    commitment: CommitmentResult | None = None
    try:
        commitment = commit_instances(
            options.address, options.calling_ae_title, options.called_ae_title,
            pairs, options.timeouts, listen_port, listen_host=listen_host,
            report_timeout=report_timeout,
        )
    except (AssociationError, CommitmentError) as exc:
        # The files are stored, but none is committed: each fails with this.
        reason = f"the storage commitment request failed: {exc}"
        failures = {pair: reason for pair in pairs}
        committed: list[tuple[str, str]] = []
    else:
        committed = [(ref.sop_class_uid, ref.sop_instance_uid)
                     for ref in commitment.committed]
        failures = {(failure.sop_class_uid, failure.sop_instance_uid): failure.reason
                    for failure in commitment.failures}

    not_committed = []
    for record in commitment_records(stored, committed, failures):
        report.write(record)
        if record.outcome is Outcome.NOT_COMMITTED:
            logger.error("%s", record.error)
            not_committed.append(FailedFile(record.path, record.error or ""))

    return replace(
        result,
        successful=result.successful - len(not_committed),
        failed=result.failed + len(not_committed),
        failures=result.failures + tuple(not_committed),
        commitment=commitment,
    )
