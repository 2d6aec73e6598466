"""A storage SCP that writes every object it receives to a directory.

``StorageReceiver`` is the server behind ``dicomsend receive``. It runs a
pynetdicom AE that accepts C-ECHO and C-STORE of any storage SOP class,
including private and unknown ones, in every transfer syntax pydicom defines.
Each object is written as a DICOM Part 10 file: a preamble, file meta built
from the C-STORE request, then the data set bytes exactly as received.

Safety rules for the files:

- The file name is ``<SOP Instance UID>.dcm``, and the UID must consist of
  digits and dots only, so no received value can name a path outside the
  output directory. A request whose UID fails this check gets status
  ``0xC000`` and nothing is written.
- An existing file is never overwritten: the second copy of an instance is
  ``<uid>_1.dcm``, the third ``<uid>_2.dcm``, and so on.
- Each object is written to a temporary file in the output directory,
  flushed to disk with fsync and then linked under its final name, so a
  crash leaves no partial file under a final name.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, AllTransferSyntaxes, PrivateTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

# The sender and the receiver identify themselves with the same UID.
from engine.association import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from engine.errors import InvalidDicomFileError
from engine.header import check_dataset
from engine.options import (
    DEFAULT_MAX_PDU_LENGTH,
    validate_ae_title,
    validate_max_pdu_length,
)

logger = logging.getLogger(__name__)

# C-STORE response statuses (PS3.4 section B.2.3).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
DEFLATED_SYNTAXES = {"1.2.840.10008.1.2.1.99"}

# The Storage Service Class UID and the Verification SOP Class UID, as listed
# in PS3.6 Annex A.
STORAGE_SERVICE_CLASS_UID = "1.2.840.10008.4.2"
VERIFICATION_SOP_CLASS_UID = "1.2.840.10008.1.1"

DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "DICOMSEND"
DEFAULT_MAX_ASSOCIATIONS = 32

# Digits and dots with no empty component, as PS3.5 section 9.1 requires.
# Leading zeros in a component are accepted although PS3.5 forbids them, so
# such non-conformant UIDs are still stored. They cannot change the path.
# Components are "0" or digits without a leading zero (PS3.5 section 9.1).
_UID_PATTERN = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_MAX_UID_LENGTH = 64

# Windows needs O_BINARY so that no newline is translated. It is 0 elsewhere.
_O_BINARY = getattr(os, "O_BINARY", 0)

# Copies of one SOP instance kept before a store fails with 0xA700.
_MAX_COPIES = 10000

# An Error Comment (0000,0902) is an LO value of at most 64 characters.
_MAX_ERROR_COMMENT_LENGTH = 64

# errno values with which os.link reports a file system without hard links.
_NO_HARD_LINK_ERRNOS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}
)


def is_valid_uid(value: object) -> bool:
    """Return True if ``value`` is 1 to 64 digits and dots, no empty component."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_UID_LENGTH
        and _UID_PATTERN.fullmatch(value) is not None
    )


def known_transfer_syntaxes() -> list[str]:
    """Return the transfer syntax UIDs the receiver accepts, uncompressed first.

    These are the syntaxes pydicom defines, plus any private ones registered
    with pydicom in this process.
    """
    return [str(uid) for uid in (*AllTransferSyntaxes, *PrivateTransferSyntaxes)]


class StorageReceiver:
    """A storage SCP that writes each received object to ``out_dir``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The directory the files are written to. It is created if missing.
    host : str, optional
        The address to listen on. The default listens on IPv4 loopback only,
        and ``"::1"`` listens on IPv6 loopback.
    port : int, optional
        The TCP port to listen on. 0 picks a free port, which :attr:`port`
        contains after :meth:`start`.
    ae_title : str, optional
        The receiver's AE title.
    allowed_calling_ae_titles : iterable of str, optional
        If given, associations from any other calling AE title are rejected
        with the reason "calling AE title not recognised".
    max_pdu_length : int, optional
        The maximum PDU length the receiver accepts, in bytes.
    require_called_ae_title : bool, optional
        If True, associations whose called AE title is not ``ae_title`` are
        rejected with the reason "called AE title not recognised".
    max_associations : int, optional
        The number of associations served at once; one more is rejected
        with the reason "local limit exceeded".

    Raises
    ------
    ValueError
        If an AE title, the port, the PDU length or ``max_associations`` is
        invalid, or ``out_dir`` exists and is not a directory.

    Notes
    -----
    Each association is served by its own thread, so objects arrive in
    parallel. :attr:`stored_count` and :attr:`failed_count` are safe to read
    from any thread.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        ae_title: str = DEFAULT_AE_TITLE,
        allowed_calling_ae_titles: Iterable[str] | None = None,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        require_called_ae_title: bool = False,
        max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
    ) -> None:
        self.out_dir = Path(out_dir).absolute()
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"Invalid out_dir '{self.out_dir}': not a directory")
        if isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(
                f"Invalid port {port!r}: expected a number from 0 to 65535"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"Invalid port {port}: allowed values are 0 to 65535")
        if isinstance(max_associations, bool) or not isinstance(max_associations, int):
            raise ValueError(
                f"Invalid max_associations {max_associations!r}: expected a whole "
                "number of 1 or more"
            )
        if max_associations < 1:
            raise ValueError(
                f"Invalid max_associations {max_associations}: at least 1 is needed"
            )

        self.host = host
        self.port = port
        self.ae_title = validate_ae_title("ae_title", ae_title)
        self.allowed_calling_ae_titles: frozenset[str] | None = None
        if allowed_calling_ae_titles is not None:
            self.allowed_calling_ae_titles = frozenset(
                validate_ae_title("allowed_calling_ae_titles", title)
                for title in allowed_calling_ae_titles
            )
        self.max_pdu_length = validate_max_pdu_length(max_pdu_length)
        self.require_called_ae_title = bool(require_called_ae_title)
        self.max_associations = max_associations

        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._count_lock = threading.Lock()
        self._stored_count = 0
        self._failed_count = 0

    @property
    def stored_count(self) -> int:
        """The number of objects written to ``out_dir`` since construction."""
        with self._count_lock:
            return self._stored_count

    @property
    def failed_count(self) -> int:
        """The number of C-STORE requests that got a failure status."""
        with self._count_lock:
            return self._failed_count

    @property
    def is_running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def start(self) -> None:
        """Start listening and return at once. Associations are served in threads.

        Raises
        ------
        RuntimeError
            If the receiver is already running.
        PermissionError
            If ``out_dir`` cannot be written to.
        OSError
            If the address cannot be bound, for example because the port is
            in use.
        """
        if self._server is not None:
            raise RuntimeError("The receiver is already running")

        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.out_dir, os.W_OK | os.X_OK):
            raise PermissionError(
                f"Unable to write to out_dir '{self.out_dir}': permission denied"
            )

        ae = AE(ae_title=self.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = self.max_pdu_length
        ae.maximum_associations = self.max_associations
        ae.require_called_aet = self.require_called_ae_title
        if self.allowed_calling_ae_titles is not None:
            ae.require_calling_aet = sorted(self.allowed_calling_ae_titles)

        # pynetdicom needs one supported context to start. The contexts of
        # each association are built from its proposal in _on_requested.
        ae.add_supported_context(
            VERIFICATION_SOP_CLASS_UID, known_transfer_syntaxes()
        )

        handlers: list[EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_SOP_COMMON, self._on_sop_common),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_STORE, self._on_c_store),
        ]
        server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers
        )
        assert server is not None  # start_server returns it when block=False
        self._ae = ae
        self._server = server
        self.port = int(server.server_address[1])
        logger.info(
            "Storage SCP %s listening on %s, writing to '%s'",
            self.ae_title,
            _format_address(self.host, self.port),
            self.out_dir,
        )

    def stop(self) -> None:
        """Stop listening and abort the associations still open.

        Does nothing if the receiver is not running. Association threads are
        not interrupted, so a C-STORE being written when its association is
        aborted is still finished on disk, although no response is sent.
        """
        server, ae = self._server, self._ae
        if server is None or ae is None:
            return
        self._server = None
        self._ae = None

        # Stop accepting first, so no association starts while the open
        # ones are aborted.
        server.shutdown()
        ae.shutdown()
        logger.info(
            "Storage SCP %s stopped: %d objects stored, %d failed",
            self.ae_title,
            self.stored_count,
            self.failed_count,
        )

    def serve_forever(self) -> None:
        """Serve until KeyboardInterrupt or SIGTERM, then stop.

        Starts the receiver if it is not running. SIGTERM is handled only
        when this runs in the main thread, because Python runs signal
        handlers there only. The previous SIGTERM handler is restored on
        return.
        """
        stop_requested = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop_requested.set()

        in_main_thread = threading.current_thread() is threading.main_thread()
        previous_handler: Any = None
        if in_main_thread:
            previous_handler = signal.signal(signal.SIGTERM, request_stop)
        try:
            if not self.is_running:
                self.start()
            # A timed wait lets the main thread see KeyboardInterrupt.
            while not stop_requested.wait(0.5):
                pass
            logger.info("SIGTERM received, stopping")
        except KeyboardInterrupt:
            logger.info("Interrupted, stopping")
        finally:
            self.stop()
            if in_main_thread:
                signal.signal(
                    signal.SIGTERM,
                    signal.SIG_DFL if previous_handler is None else previous_handler,
                )

    def __enter__(self) -> StorageReceiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Association events. pynetdicom calls these in the association's thread.

    def _on_requested(self, event: Event) -> None:
        """Set the association's supported contexts from what the peer proposes."""
        primitive = event.assoc.requestor.primitive
        proposed = primitive.presentation_context_definition_list if primitive else []
        event.assoc.acceptor.supported_contexts = _supported_contexts(proposed)

    def _on_sop_common(
        self, event: Event
    ) -> dict[str, SOPClassCommonExtendedNegotiation]:
        """Route C-STOREs of proposed unknown SOP classes to the storage service.

        pynetdicom picks the service for a request from its SOP class UID and
        has no service for a UID it does not know. The accepted SOP Class
        Common Extended Negotiation items of an association map such UIDs to
        the Storage Service Class. pynetdicom keeps these items local and
        sends none of them back in the A-ASSOCIATE-AC. Items the peer proposes
        are not accepted, as with pynetdicom's default handler.
        """
        routes: dict[str, SOPClassCommonExtendedNegotiation] = {}
        for context in event.assoc.requestor.requested_contexts:
            abstract_syntax = str(context.abstract_syntax)
            if abstract_syntax in routes or not _is_unknown_sop_class(abstract_syntax):
                continue
            item = SOPClassCommonExtendedNegotiation()
            try:
                item.sop_class_uid = abstract_syntax
                item.service_class_uid = STORAGE_SERVICE_CLASS_UID
            except ValueError as exc:
                logger.warning(
                    "Unable to accept C-STORE for SOP class %r from %s: %s",
                    abstract_syntax,
                    event.assoc.requestor.ae_title,
                    exc,
                )
                continue
            routes[abstract_syntax] = item
        return routes

    def _on_established(self, event: Event) -> None:
        assoc = event.assoc
        logger.info(
            "Association from %s at %s established: %d of %d presentation "
            "contexts accepted",
            assoc.requestor.ae_title,
            _format_address(assoc.requestor.address, assoc.requestor.port),
            len(assoc.accepted_contexts),
            len(assoc.accepted_contexts) + len(assoc.rejected_contexts),
        )

    def _on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        reply = assoc.acceptor.primitive
        reason = reply.reason_str if reply is not None else "No reason given"
        request = assoc.requestor.primitive
        logger.warning(
            "Rejected association from %s at %s to %s: %s",
            assoc.requestor.ae_title,
            _format_address(assoc.requestor.address, assoc.requestor.port),
            request.called_ae_title if request is not None else "?",
            reason[:1].lower() + reason[1:],
        )

    def _on_released(self, event: Event) -> None:
        logger.info("Association from %s released", event.assoc.requestor.ae_title)

    def _on_aborted(self, event: Event) -> None:
        logger.info("Association from %s aborted", event.assoc.requestor.ae_title)

    # C-STORE.

    def _on_c_store(self, event: Event) -> Dataset | int:
        """Write one received object and return the C-STORE status."""
        request = cast(C_STORE, event.request)
        sop_class_uid = str(getattr(request, "AffectedSOPClassUID", "") or "")
        received_instance_uid = getattr(request, "AffectedSOPInstanceUID", None)
        calling_ae_title = event.assoc.requestor.ae_title
        sop_class_name = _sop_class_name(sop_class_uid)

        # The UID names the file, so anything other than digits and dots is
        # rejected before a path is built from it.
        if not is_valid_uid(received_instance_uid):
            self._count(stored=False)
            logger.error(
                "Rejected %s from %s: invalid SOP Instance UID %r, expected 1 to "
                "64 digits and dots",
                sop_class_name,
                calling_ae_title,
                received_instance_uid,
            )
            return _failure(
                STATUS_CANNOT_UNDERSTAND,
                "Invalid Affected SOP Instance UID: not a DICOM UID",
            )
        sop_instance_uid = str(received_instance_uid)

        # A data set cut short or with a broken structure is refused rather
        # than stored as a file no reader can open.
        problem = _structure_problem(request.DataSet, str(event.context.transfer_syntax),
                                     sop_instance_uid)
        if problem is not None:
            self._count(stored=False)
            logger.error("Rejected %s %s from %s: %s", sop_class_name,
                         sop_instance_uid, calling_ae_title, problem)
            return _failure(STATUS_CANNOT_UNDERSTAND,
                            "Invalid data set: truncated or malformed")

        try:
            header = _encode_header(
                sop_class_uid,
                sop_instance_uid,
                str(event.context.transfer_syntax),
                calling_ae_title,
            )
            path = self._write(header, request.DataSet, sop_instance_uid)
        except OSError as exc:
            self._count(stored=False)
            logger.error(
                "Unable to store %s %s from %s in '%s': %s",
                sop_class_name,
                sop_instance_uid,
                calling_ae_title,
                self.out_dir,
                exc,
            )
            reason = exc.strerror or str(exc)
            return _failure(STATUS_OUT_OF_RESOURCES, f"Unable to store: {reason}")

        self._count(stored=True)
        logger.info(
            "Stored %s %s from %s as %s",
            sop_class_name,
            sop_instance_uid,
            calling_ae_title,
            path,
        )
        return STATUS_SUCCESS

    def _write(
        self, header: bytes, dataset: BytesIO | Any, sop_instance_uid: str
    ) -> Path:
        """Write header and data set to a new file named after the UID."""
        # A random hidden name, created exclusively. Mode 0o666 lets the umask
        # decide the permissions, as for any file the user creates.
        temporary = self.out_dir / f".receiving-{secrets.token_hex(8)}.part"
        descriptor = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666
        )
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(header)
                _copy_dataset(dataset, stream)
                stream.flush()
                os.fsync(stream.fileno())
            return _link_unique(temporary, self.out_dir, sop_instance_uid)
        finally:
            temporary.unlink(missing_ok=True)

    def _count(self, *, stored: bool) -> None:
        with self._count_lock:
            if stored:
                self._stored_count += 1
            else:
                self._failed_count += 1


def _is_unknown_sop_class(uid: str) -> bool:
    """Return True for a UID pynetdicom has no service class for."""
    return uid_to_service_class(uid) is ServiceClass


def _is_acceptable_abstract_syntax(uid: str) -> bool:
    """Return True for Verification, storage SOP classes and unknown UIDs.

    An unknown or private UID is taken to be a storage SOP class, as
    pynetdicom's unrestricted storage mode does. Known SOP classes of other
    services (query/retrieve, worklist, ...) are rejected.
    """
    if uid == VERIFICATION_SOP_CLASS_UID:
        return True
    service_class = uid_to_service_class(uid)
    return service_class is StorageServiceClass or service_class is ServiceClass


def _supported_contexts(
    proposed: Iterable[PresentationContext],
) -> list[PresentationContext]:
    """Build the supported contexts for one association's proposal.

    pynetdicom accepts, for each proposed context, the first transfer syntax
    of the supported context that the proposal contains. Putting the peer's
    own syntaxes first, in its order, makes the receiver accept the syntax
    the peer prefers.
    """
    known = known_transfer_syntaxes()
    known_set = set(known)
    preferred: dict[str, list[str]] = {}
    for context in proposed:
        abstract_syntax = str(context.abstract_syntax)
        if not _is_acceptable_abstract_syntax(abstract_syntax):
            continue
        syntaxes = preferred.setdefault(abstract_syntax, [])
        for transfer_syntax in map(str, context.transfer_syntax):
            if transfer_syntax in known_set and transfer_syntax not in syntaxes:
                syntaxes.append(transfer_syntax)

    contexts = []
    for abstract_syntax, syntaxes in preferred.items():
        context = PresentationContext()
        try:
            context.abstract_syntax = abstract_syntax
        except ValueError as exc:
            logger.warning("Rejecting abstract syntax %r: %s", abstract_syntax, exc)
            continue
        # A syntax no proposal contains is never picked, but keeping the full
        # list makes pynetdicom reject with "transfer syntaxes not supported".
        ordered: list[str | bytes | UID] = [
            *syntaxes,
            *(uid for uid in known if uid not in syntaxes),
        ]
        context.transfer_syntax = ordered
        contexts.append(context)
    return contexts


def _encode_header(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    calling_ae_title: str,
) -> bytes:
    """Encode the preamble, the DICM prefix and the file meta information."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if calling_ae_title:
        meta.SourceApplicationEntityTitle = calling_ae_title

    stream = DicomBytesIO()
    stream.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(stream, meta, enforce_standard=True)
    return stream.getvalue()


def _copy_dataset(dataset: BytesIO | Any, stream: Any) -> None:
    """Copy the received data set bytes to ``stream`` without decoding them."""
    if isinstance(dataset, BytesIO):
        with dataset.getbuffer() as view:
            stream.write(view)
        return

    # pynetdicom hands over a file object when it is set to spool large
    # data sets to disk (_config.STORE_RECV_CHUNKED_DATASET).
    dataset.seek(0)
    while chunk := dataset.read(1 << 20):
        stream.write(chunk)


def _link_unique(temporary: Path, out_dir: Path, sop_instance_uid: str) -> Path:
    """Give the complete file ``temporary`` the first free name for the UID.

    A hard link fails if the name exists, so no file is ever replaced. On a
    file system without hard links, an exclusive create reserves the name
    and the complete file then replaces the empty one. A crash between the
    two steps leaves an empty file under the final name.
    """
    for copy in range(_MAX_COPIES):
        # "_" cannot occur in a UID, so a copy never takes another UID's name.
        suffix = ".dcm" if copy == 0 else f"_{copy}.dcm"
        target = out_dir / f"{sop_instance_uid}{suffix}"
        try:
            os.link(temporary, target)
            return target
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINK_ERRNOS:
                raise

        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        os.replace(temporary, target)
        return target

    raise OSError(
        errno.EEXIST,
        f"{_MAX_COPIES} files of SOP instance {sop_instance_uid} already exist",
    )


def _structure_problem(dataset: Any, transfer_syntax: str,
                       sop_instance_uid: str) -> str | None:
    """Return why a received data set is unreadable, or None when it is sound."""
    if transfer_syntax in DEFLATED_SYNTAXES:
        return None  # checking would mean inflating the whole stream
    data = dataset.getbuffer() if isinstance(dataset, BytesIO) else bytes(dataset)
    try:
        check_dataset(data, transfer_syntax, sop_instance_uid)
    except InvalidDicomFileError as exc:
        # The check words its message for a sender's file; keep the reason.
        reason = str(exc).split(" as ", 1)[-1]
        return f"the data set is unusable: {reason}"
    finally:
        if isinstance(data, memoryview):
            data.release()
    return None


def _failure(status: int, comment: str) -> Dataset:
    """Build a C-STORE response status with an Error Comment."""
    response = Dataset()
    response.Status = status
    response.ErrorComment = comment[:_MAX_ERROR_COMMENT_LENGTH]
    return response


def _sop_class_name(uid: str) -> str:
    """Return the SOP class's name, or "SOP class <uid>" if pydicom has none."""
    if not uid:
        return "unknown SOP class"
    name = UID(uid).name
    return f"SOP class {uid}" if name == uid else name


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
