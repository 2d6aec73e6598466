"""Re-encode a file inside a sender, for the few files that cannot go as they are.

Two cases land here: the receiver refused the file's transfer syntax, so it
goes uncompressed, or the data set has an odd length, which the standard
forbids on the wire (DCMTK's storescp aborts the association with "Odd
Fragment Length"), so pydicom writes it again with its odd values padded.
Both are rare, so they run in the sender instead of going back through the
workers, and neither loses data.
"""

from __future__ import annotations

import pydicom

from engine.jobs import ReadyFile
from transcode.transcoder import Transcoder


def reencode(item: ReadyFile, syntax: str) -> bytes:
    """Return the data set of ``item``'s source file encoded in ``syntax``.

    Raises
    ------
    ValueError
        If a lossy re-encoding gave the object a new SOP Instance UID: the
        source's pixels must not be sent under that UID.
    """
    dataset = pydicom.dcmread(item.source_path, force=True)
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = item.file_transfer_syntax
    if item.spooled and item.path != item.source_path:
        new_uid = str(dataset.get("SOPInstanceUID", "")) != item.sop_instance_uid
        if new_uid:
            raise ValueError(
                "the lossy re-encoding cannot be replaced by an uncompressed copy; "
                "choose a transfer syntax the receiver accepts"
            )
    result = Transcoder(syntax).transcode(dataset)
    data = result.dataset_bytes()
    if len(data) % 2:
        data += b"\x00"
    return data
