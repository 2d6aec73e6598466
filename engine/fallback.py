"""Re-encode a file inside a sender, for the few files that cannot go as they are.

Two cases land here. In the first, the receiver rejected the file's transfer
syntax, so it goes in a fallback syntax (lossless compressed, Explicit or
Implicit VR Little Endian). In the second, the data set contains odd-length
values, which the standard forbids on the wire (DCMTK's storescp aborts the
association with "Odd Fragment Length"), so pydicom writes it again with
each value padded.
Both are rare, so they run in the sender instead of going back through the
workers, and neither loses data: every fallback syntax is lossless.
"""

from __future__ import annotations

import pydicom
from pydicom.dataset import FileMetaDataset

from engine.jobs import ReadyFile
from transcode.transcoder import Transcoder


def reencode(item: ReadyFile, syntax: str, verify: bool = False) -> bytes:
    """Return the data set of ``item`` encoded in ``syntax``, a lossless syntax.

    The source file is re-encoded, except when a worker re-encoded it lossily
    and gave it a new SOP Instance UID. That object is what goes on the wire,
    so its spooled data set is decoded instead, and the lossy pixels keep
    their new UID and their Lossy Image Compression attributes.

    Parameters
    ----------
    item : ReadyFile
        The file as the sender has it.
    syntax : str
        The transfer syntax UID to encode into; never a lossy one.
    verify : bool
        Decode a compressed result and compare its pixels with the input.

    Raises
    ------
    transcode.errors.TranscodeError
        If the pixel data cannot be encoded in ``syntax``.
    ValueError, OSError
        If the file cannot be read or decoded.
    """
    dataset = pydicom.dcmread(item.source_path, force=True)
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = item.file_transfer_syntax
    transcoded = item.spooled and item.path != item.source_path
    if transcoded and _instance_uid(dataset) != item.sop_instance_uid:
        dataset = _read_spooled(item)

    result = Transcoder(syntax, verify=verify).transcode(dataset)
    data = result.dataset_bytes()
    if len(data) % 2:
        data += b"\x00"
    return data


def _instance_uid(dataset: pydicom.Dataset) -> str:
    uid = dataset.get("SOPInstanceUID") or dataset.file_meta.get(
        "MediaStorageSOPInstanceUID", "")
    return str(uid)


def _read_spooled(item: ReadyFile) -> pydicom.Dataset:
    """Read a worker's spooled data set, which has no file meta information."""
    with open(item.path, "rb") as spool:
        spool.seek(item.offset)
        dataset = pydicom.dcmread(spool, force=True)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = item.transfer_syntax
    return dataset
