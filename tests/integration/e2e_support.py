"""Helpers of the end-to-end tests: loading the receivers and comparing objects.

``tests/receivers.py`` is loaded from its path rather than imported through
``sys.path``: putting ``tests/`` on ``sys.path`` would make ``tests/engine``
shadow the ``engine`` package, in this process and in every ``spawn`` child.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = PROJECT_ROOT / ".." / "shared" / "corpus" / "real"
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# Pixel data elements, compared as decoded pixels rather than as bytes, and
# data set trailing padding, which carries no information.
PIXEL_TAGS = {0x7FE0_0010, 0x7FE0_0008, 0x7FE0_0009}
PADDING_TAG = 0xFFFC_FFFC
# Re-encoding the pixel data may legitimately change these; the tests check
# their new values explicitly.
COLOR_TAGS = {0x0028_0004, 0x0028_0006}  # PhotometricInterpretation, Planar...


def load_receivers() -> ModuleType:
    """Return ``tests/receivers.py`` as a module, loading it once."""
    name = "dicomsend_test_receivers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, PROJECT_ROOT / "tests" / "receivers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read(path: Path | str) -> Dataset:
    """Read a whole DICOM file, file meta or not, without pydicom's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax(dataset)
    return dataset


def instance_uid(dataset: Dataset) -> str:
    """Return the SOP Instance UID of the data set, else that of its file meta."""
    uid = dataset.get("SOPInstanceUID", "")
    if not uid:
        uid = dataset.file_meta.get("MediaStorageSOPInstanceUID", "")
    return str(uid).strip()


def transfer_syntax(dataset: Dataset) -> UID:
    """Return the transfer syntax a file was read in."""
    meta_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if meta_syntax:
        return UID(meta_syntax)
    implicit, little_endian = dataset.original_encoding
    if implicit:
        return pydicom.uid.ImplicitVRLittleEndian
    return (pydicom.uid.ExplicitVRLittleEndian if little_endian
            else pydicom.uid.ExplicitVRBigEndian)


def element_differences(sent: Dataset, received: Dataset,
                        ignore: set[int] = frozenset(),
                        untyped_private: bool = False) -> list[str]:
    """List every non-pixel element that differs between two data sets.

    Values are compared as pydicom decodes them, so the same value in another
    encoding (implicit or explicit VR, big or little endian) is equal. Binary
    values (OB, OW, UN...) are compared as bytes, after undoing a byte swap
    between a big endian source and a little endian copy. With
    ``untyped_private`` (a copy in Implicit VR, which carries no VR), private
    elements are checked for presence only, because pydicom cannot decode
    their values without the VR.
    """
    differences: list[str] = []
    skip = PIXEL_TAGS | {PADDING_TAG} | set(ignore)
    sent_tags = {int(tag) for tag in sent.keys() if int(tag) not in skip}
    received_tags = {int(tag) for tag in received.keys() if int(tag) not in skip}
    for tag in sorted(sent_tags - received_tags):
        differences.append(f"{pydicom.tag.Tag(tag)} missing from the received copy")
    for tag in sorted(received_tags - sent_tags):
        differences.append(f"{pydicom.tag.Tag(tag)} added in the received copy")

    for tag in sorted(sent_tags & received_tags):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            left, right = sent[tag], received[tag]
            if left.VR == "SQ" and right.VR == "SQ":
                if len(left.value) != len(right.value):
                    differences.append(f"{left.tag} has {len(left.value)} items, "
                                       f"received {len(right.value)}")
                    continue
                for index, (one, two) in enumerate(zip(left.value, right.value)):
                    differences.extend(
                        f"{left.tag}[{index}] {line}"
                        for line in element_differences(one, two, set(),
                                                        untyped_private)
                    )
                continue
            if untyped_private and left.tag.is_private:
                continue
            if not same_value(left.value, right.value):
                differences.append(
                    f"{left.tag} {left.keyword or 'private'}: sent "
                    f"{_short(left.value)}, received {_short(right.value)}"
                )
    return differences


def same_value(left: object, right: object) -> bool:
    """Compare two element values as the module docstring describes."""
    if left in (None, "", b"", []) and right in (None, "", b"", []):
        return True
    if isinstance(left, bytes) and isinstance(right, bytes):
        if left == right:
            return True
        # A big endian OW/OF/OL value becomes little endian on the way.
        for width in (2, 4, 8):
            if len(left) % width == 0 and len(left) == len(right):
                swapped = np.frombuffer(left, f">u{width}").astype(f"<u{width}")
                if swapped.tobytes() == right:
                    return True
        return left.rstrip(b"\x00 ") == right.rstrip(b"\x00 ")
    if isinstance(left, bytes) or isinstance(right, bytes):
        return False
    if left == right:
        return True
    return str(left).rstrip("\x00 ") == str(right).rstrip("\x00 ")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def pixels(dataset: Dataset) -> np.ndarray:
    """Decode the pixel data, converting YCbCr to RGB.

    pydicom's own decoders come first. Data they cannot decode (12-bit JPEG
    Extended, for one) is decoded as the transcoder does it, with imagecodecs.
    """
    from transcode.pixels import decode_pixels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dataset.pixel_array
        except (RuntimeError, NotImplementedError, ValueError, TypeError):
            return decode_pixels(dataset, transfer_syntax(dataset)).array


def group_by_instance(paths: list[Path]) -> dict[str, list[Path]]:
    """Map each SOP Instance UID to the files that carry it."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        groups[instance_uid(read(path))].append(path)
    return groups


def received_files(out_dir: Path) -> list[Path]:
    """Return every file a receiver wrote below ``out_dir``, sorted."""
    return sorted(path for path in out_dir.rglob("*") if path.is_file())
