"""``dicomsend plan``: what a send would do with each file, without sending any.

The files' headers are read as ``send`` reads them. One association (more
when over 128 presentation contexts) proposes every (SOP class, transfer
syntax) pair the batch needs, plus Explicit and Implicit VR Little Endian
for each SOP class, and is released at once. The contexts the receiver
accepts decide, per group of files with the same SOP class, file syntax and
target syntax, whether the files go as they are, re-encoded, decompressed
because the receiver rejected their syntax, or not at all.

The plan reads no pixel data, so a file whose pixels cannot be decoded or
encoded in the target syntax shows as re-encoded here and fails in ``send``
with the reason.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.association import Association, ContextRequest
from engine.header import PixelDataKind
from engine.options import (
    DEFAULT_CALLED_AE_TITLE,
    DEFAULT_CALLING_AE_TITLE,
    DEFAULT_MAX_PDU_LENGTH,
    Timeouts,
    parse_address,
    validate_ae_title,
    validate_max_pdu_length,
)
from engine.result import FailedFile
from engine.sources import (
    SkippedFile,
    Source,
    source_from_path,
    sources_from_directory,
)
from engine.association import MAX_CONTEXTS
from engine.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    UNCOMPRESSED_FALLBACKS,
    uid_name,
)

logger = logging.getLogger(__name__)



class PlanAction(enum.Enum):
    """The action ``send`` would take with a group of files."""

    SEND_AS_IS = "sent as is"
    REENCODE = "re-encoded"
    DECOMPRESS = "decompressed"
    REFUSE = "refused"


@dataclass(frozen=True, slots=True)
class PlanGroup:
    """Files with the same SOP class, file syntax and target syntax.

    Attributes
    ----------
    sop_class_uid, file_transfer_syntax : str
        What the files' headers give.
    target_transfer_syntax : str
        The syntax ``send`` would ask for: the one of ``--transfer-syntax``,
        else the file's own. Objects without pixel data keep an uncompressed
        syntax when the target is compressed, because there is nothing to
        compress.
    action : PlanAction
    wire_transfer_syntax : str or None
        The syntax the data sets would go in; None when refused.
    files : tuple of str
        The files, as given or found.
    reason : str or None
        Why the files are refused, or why they fall back to an uncompressed
        syntax.
    """

    sop_class_uid: str
    file_transfer_syntax: str
    target_transfer_syntax: str
    action: PlanAction
    wire_transfer_syntax: str | None
    files: tuple[str, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """The outcome of ``plan_transfer``.

    ``failed`` lists the files whose header could not be read, each with the
    error ``send`` would report. ``skipped`` lists the files a directory walk
    left out (not DICOM, DICOMDIR).
    """

    address: str
    groups: tuple[PlanGroup, ...]
    failed: tuple[FailedFile, ...]
    skipped: tuple[SkippedFile, ...]
    associations: int
    contexts_proposed: int

    @property
    def total_files(self) -> int:
        return sum(len(group.files) for group in self.groups) + len(self.failed)

    @property
    def refused_files(self) -> int:
        return sum(len(group.files) for group in self.groups
                   if group.action is PlanAction.REFUSE)


def plan_transfer(
    addr: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    calling_ae_title: str = DEFAULT_CALLING_AE_TITLE,
    called_ae_title: str = DEFAULT_CALLED_AE_TITLE,
    transfer_syntax: str | None = None,
    allow_lossy: bool = False,
    max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
    timeouts: Timeouts | None = None,
) -> TransferPlan:
    """Ask the receiver which contexts it accepts and plan each file's transfer.

    Parameters
    ----------
    addr : str
        The receiver: ``host:port``, ``host`` (port 104) or ``[ipv6]:port``.
    paths : iterable of str or path-like
        Files and folders, as ``dicomsend send`` takes them.
    calling_ae_title, called_ae_title : str
        Our AE title and the receiver's.
    transfer_syntax : str or None
        The target syntax (UID or keyword); None keeps each file's own.
    allow_lossy : bool
        Permit a lossy ``transfer_syntax``; without it files that would need
        lossy compression are planned as refused.
    max_pdu_length : int
        The largest PDU we accept, 4096 to 131072 bytes.
    timeouts : Timeouts, optional
        Connection, ACSE and network timeouts.

    Returns
    -------
    TransferPlan

    Raises
    ------
    ValueError
        If an option is invalid or a path does not exist.
    ConnectionFailedError, AssociationRejectedError, AssociationError
        If an association cannot be opened, as ``StoreScu.send`` raises them.
    """
    address = parse_address(addr)
    calling = validate_ae_title("calling_ae_title", calling_ae_title)
    called = validate_ae_title("called_ae_title", called_ae_title)
    max_pdu = validate_max_pdu_length(max_pdu_length)
    target = None
    lossy_target = False
    if transfer_syntax is not None:
        from transcode.syntaxes import get_syntax_info, resolve_transfer_syntax

        target = str(resolve_transfer_syntax(transfer_syntax))
        lossy_target = get_syntax_info(target).lossy

    sources, skipped = collect_sources(paths)
    readable = [source for source in sources if source.header is not None]
    failed = tuple(FailedFile(source.name, source.error or "unreadable file")
                   for source in sources if source.header is None)

    # Group the files and list the contexts they need.
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for source in readable:
        key = _group_key(source, target)
        grouped.setdefault(key, []).append(source.name)
    requests = _context_requests(grouped)

    # Propose them, at most 128 per association.
    accepted: set[tuple[str, str]] = set()
    rejected: dict[str, str] = {}
    associations = 0
    for start in range(0, len(requests), MAX_CONTEXTS):
        chunk = requests[start:start + MAX_CONTEXTS]
        association = Association.open(
            address.host, address.port, calling_ae_title=calling,
            called_ae_title=called, contexts=chunk, max_pdu_length=max_pdu,
            timeouts=timeouts or Timeouts(),
        )
        associations += 1
        try:
            accepted.update(association.accepted_contexts)
            for sop_class, reason in association.rejected_contexts.items():
                rejected.setdefault(sop_class, reason)
        finally:
            association.release()

    groups = tuple(
        _decide(key, tuple(files), accepted, rejected, lossy_target, allow_lossy)
        for key, files in sorted(grouped.items(), key=lambda item: -len(item[1]))
    )
    logger.info("Planned %d files in %d groups over %d association(s)",
                len(readable), len(groups), associations)
    return TransferPlan(
        address=str(address), groups=groups, failed=failed, skipped=tuple(skipped),
        associations=associations, contexts_proposed=len(requests),
    )


def collect_sources(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[Source], list[SkippedFile]]:
    """Read the headers of the files in ``paths`` as ``send`` does.

    Raises
    ------
    ValueError
        If a path does not exist.
    """
    sources: list[Source] = []
    skipped: list[SkippedFile] = []
    seen: set[str] = set()
    for path in paths:
        name = os.fspath(path)
        if not os.path.exists(name):
            raise ValueError(f"Invalid path '{name}': no such file or directory")
        found: Iterable[Source | SkippedFile]
        if os.path.isdir(name):
            found = sources_from_directory(name)
        else:
            found = [source_from_path(name)]
        for item in found:
            if isinstance(item, SkippedFile):
                skipped.append(item)
                continue
            key = os.path.realpath(item.name)
            if key not in seen:
                seen.add(key)
                sources.append(item)
    return sources, skipped


def _group_key(source: Source, target: str | None) -> tuple[str, str, str]:
    header = source.header
    assert header is not None
    wanted = target or header.transfer_syntax
    no_pixels = (header.layout is not None
                 and header.layout.pixel_data is PixelDataKind.NONE)
    if no_pixels and wanted not in NATIVE_SYNTAXES:
        # The transcoder sends objects without pixel data in Explicit VR
        # Little Endian when the target is compressed.
        wanted = EXPLICIT_VR_LITTLE_ENDIAN
    return header.sop_class_uid, header.transfer_syntax, wanted


def _context_requests(
    grouped: dict[tuple[str, str, str], list[str]],
) -> list[ContextRequest]:
    """Build one context per needed pair, most files first, then the fallbacks."""
    counts: dict[tuple[str, str], int] = {}
    for (sop_class, _, wanted), files in grouped.items():
        counts[(sop_class, wanted)] = counts.get((sop_class, wanted), 0) + len(files)
    pairs = sorted(counts, key=lambda pair: -counts[pair])
    for sop_class in dict.fromkeys(sop_class for sop_class, _ in list(pairs)):
        for syntax in UNCOMPRESSED_FALLBACKS:
            if (sop_class, syntax) not in counts:
                pairs.append((sop_class, syntax))
    return [ContextRequest(sop_class, (syntax,)) for sop_class, syntax in pairs]


def _decide(
    key: tuple[str, str, str],
    files: tuple[str, ...],
    accepted: set[tuple[str, str]],
    rejected: dict[str, str],
    lossy_target: bool,
    allow_lossy: bool,
) -> PlanGroup:
    sop_class, file_syntax, wanted = key

    def group(action: PlanAction, wire: str | None,
              reason: str | None = None) -> PlanGroup:
        return PlanGroup(sop_class, file_syntax, wanted, action, wire, files, reason)

    reencoded_lossily = lossy_target and wanted != file_syntax
    if reencoded_lossily and not allow_lossy:
        return group(PlanAction.REFUSE, None,
                     f"{uid_name(wanted)} is lossy; allow lossy compression or "
                     "choose a lossless transfer syntax")
    if (sop_class, wanted) in accepted:
        action = PlanAction.SEND_AS_IS if wanted == file_syntax else PlanAction.REENCODE
        return group(action, wanted)

    refusal = f"the receiver refused {uid_name(wanted)}"
    for syntax in UNCOMPRESSED_FALLBACKS:
        if (sop_class, syntax) not in accepted:
            continue
        if reencoded_lossily:
            # A lossy copy has a new SOP Instance UID, so send cannot put
            # the uncompressed source in its place.
            refusal += ", and a lossily re-encoded file has no fallback"
            break
        action = (PlanAction.SEND_AS_IS if syntax == file_syntax
                  else PlanAction.DECOMPRESS if file_syntax not in NATIVE_SYNTAXES
                  else PlanAction.REENCODE)
        return group(action, syntax, refusal)

    if sop_class in rejected and not any(pair[0] == sop_class for pair in accepted):
        return group(PlanAction.REFUSE, None,
                     f"the receiver refused {uid_name(sop_class)} "
                     f"({rejected[sop_class]}); ask its administrator to accept "
                     "this SOP class")
    return group(PlanAction.REFUSE, None,
                 f"{refusal} and accepted no uncompressed fallback for "
                 f"{uid_name(sop_class)}; choose a transfer syntax the receiver "
                 "accepts")


def format_plan(plan: TransferPlan) -> list[str]:
    """Return the plan as printable lines: one per group, failure and summary."""
    lines = [(
        f"Plan for {plan.total_files} files to {plan.address} "
        f"({plan.contexts_proposed} presentation contexts proposed on "
        f"{plan.associations} association(s); nothing was sent)"
    )]
    for group in plan.groups:
        count = _files(len(group.files))
        what = f"{uid_name(group.sop_class_uid)} in {uid_name(group.file_transfer_syntax)}"
        if group.action is PlanAction.SEND_AS_IS:
            outcome = "sent as is"
        elif group.action is PlanAction.REFUSE:
            outcome = "refused"
        else:
            outcome = f"{group.action.value} to {uid_name(str(group.wire_transfer_syntax))}"
        line = f"  {count}: {what}: {outcome}"
        if group.reason:
            line += f" ({group.reason})"
        lines.append(line)
    for failure in plan.failed:
        lines.append(f"  failed: {failure.error}")
    summary = [f"{plan.total_files - plan.refused_files - len(plan.failed)} to send",
               f"{plan.refused_files} refused", f"{len(plan.failed)} unreadable"]
    if plan.skipped:
        summary.append(f"{len(plan.skipped)} skipped (not DICOM or DICOMDIR)")
    text = ", ".join(summary)
    lines.append(text[0].upper() + text[1:])
    return lines


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


__all__: Sequence[str] = [
    "PlanAction",
    "PlanGroup",
    "TransferPlan",
    "collect_sources",
    "format_plan",
    "plan_transfer",
]
