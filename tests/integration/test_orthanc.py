"""Send to Orthanc, a PACS, and check through its REST API what it stored.

Orthanc (the Debian package ``orthanc``, 1.10 at the time of writing) runs
with its own configuration on free loopback ports and its storage in the
test's tmp_path. Without Orthanc the tests are skipped, except under CI
(``CI=true``) where they fail.

Orthanc is pickier than storescp: it parses every data set with DCMTK,
refuses objects that lack the patient, study or series identifiers, and
checks that the data set's SOP Instance UID matches the request's. The
corpus test derives what each file should get from the file itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from e2e_support import PYDICOM_TEST_FILES, load_receivers
from engine import StoreScu

receivers = load_receivers()

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

# Orthanc aborts after waiting this many seconds for the rest of a data set.
# It is short because one sample file makes Orthanc wait.
ORTHANC_SCP_TIMEOUT = 2

# Files that cannot be sent at all: no SOP Instance UID, or truncated.
NOT_SENDABLE = {
    "pydicomdata_JLSL_RGB_ILV1.dcm": "has no SOP Instance UID (0008,0018)",
    "MR_truncated.dcm": "the file ends inside the value of (7FE0,0010)",
    "rtplan_truncated.dcm": "the file ends inside the value of (300A,00B0)",
    "empty_charset_LEI.dcm": "neither a SOP Class UID (0008,0016) nor",
    "meta_missing_tsyntax.dcm": "neither a SOP Class UID (0008,0016) nor",
    "nested_priv_SQ.dcm": "neither a SOP Class UID (0008,0016) nor",
}
# Orthanc accepts no context in Deflated Image Frame Compression, and no
# decoder exists to send this file in another syntax.
UNDECODABLE = {
    "pydicomdata_liver_deflate.dcm": "DeflatedImageFrameCompression",
}
# Data sets that DCMTK, inside Orthanc, cannot parse: Orthanc returns 0xC000.
# DCMTK's own storescu cannot send them either.
UNPARSABLE = {
    "rtdose_rle.dcm", "rtdose_rle_1frame.dcm", "pydicom_rtdose_rle.dcm",
    "priv_SQ.dcm", "UN_sequence.dcm", "no_meta_group_length.dcm",
}
# Explicit VR in its file meta, Implicit VR in its data set: Orthanc reads
# a huge bogus length, waits for the rest and aborts after its timeout.
WRONG_VR_ENCODING = "SC_rgb_jpeg.dcm"
REQUIRED_BY_ORTHANC = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Any]:
    with receivers.start_orthanc_pacs(
            tmp_path / "orthanc", DicomScpTimeout=ORTHANC_SCP_TIMEOUT) as server:
        yield server


def stored_instances(orthanc: Any) -> dict[str, dict[str, str]]:
    """Return Orthanc's simplified tags of every instance, by SOP Instance UID."""
    stored = {}
    for instance_id in orthanc.rest("/instances"):
        tags = orthanc.rest(f"/instances/{instance_id}/simplified-tags")
        stored[tags["SOPInstanceUID"]] = tags
    return stored


def read_quietly(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True, stop_before_pixels=True)


def uid_mismatch(dataset: Dataset) -> bool:
    """True when the file meta names another SOP Instance UID than the data set."""
    meta_uid = dataset.file_meta.get("MediaStorageSOPInstanceUID")
    return bool(meta_uid) and "SOPInstanceUID" in dataset and (
        str(meta_uid) != str(dataset.SOPInstanceUID))


def test_corpus_and_pydicom_files(orthanc: Any, corpus_dir: Path) -> None:
    """Every file gets the outcome its content calls for; Orthanc stores the rest."""
    scu = StoreScu(f"127.0.0.1:{orthanc.port}", called_ae_title="ORTHANC",
                   concurrency=2, transcode_workers=1, retries=1,
                   dimse_timeout=20)
    scu.add_directory(corpus_dir)
    scu.add_directory(PYDICOM_TEST_FILES)
    sent: dict[str, str] = {}
    result = scu.send(on_file_sent=lambda err, event: sent.__setitem__(
        event.data["file"], event.data["sop_instance_uid"]))

    assert result.successful + result.failed == result.total_files
    assert result.total_files > 200
    failures = {Path(failure.file).name: failure.error for failure in result.failures}
    assert len(failures) == len(result.failures), "two failed files share a name"

    for name, fragment in {**NOT_SENDABLE, **UNDECODABLE}.items():
        assert fragment in failures.pop(name), name
    for name in UNPARSABLE:
        assert "Error: cannot understand (0xC000)" in failures.pop(name), name
    assert "Association aborted by" in failures.pop(WRONG_VR_ENCODING)

    # The rest is decided by each file's content.
    sources = [path for folder in (corpus_dir, PYDICOM_TEST_FILES)
               for path in folder.rglob("*") if path.is_file()]
    for path in sources:
        name = path.name
        if name not in failures:
            continue
        dataset = read_quietly(path)
        error = failures.pop(name)
        if any(not dataset.get(keyword) for keyword in REQUIRED_BY_ORTHANC):
            assert "Refused: out of resources (0xA700), 2 attempts" in error, name
        else:
            pytest.fail(f"unexpected failure of {path}: {error}")
    assert failures == {}

    # Orthanc contains exactly the objects reported as stored.
    assert set(stored_instances(orthanc)) == set(sent.values())
    assert result.warnings == ()


def test_uid_mismatch_stored(orthanc: Any) -> None:
    """A file whose meta names another instance is stored under the data set's UID."""
    path = PYDICOM_TEST_FILES / "rtplan.dcm"
    dataset = read_quietly(path)
    assert uid_mismatch(dataset)
    scu = StoreScu(f"127.0.0.1:{orthanc.port}", transcode_workers=1)
    scu.add_file(path)
    result = scu.send()

    assert (result.successful, result.failed) == (1, 0)
    assert set(stored_instances(orthanc)) == {str(dataset.SOPInstanceUID)}


def storage_sop_classes(count: int) -> list[str]:
    """Return ``count`` distinct storage SOP Class UIDs from pynetdicom's list."""
    from pynetdicom import AllStoragePresentationContexts

    uids = sorted({str(context.abstract_syntax)
                   for context in AllStoragePresentationContexts})
    assert len(uids) >= count
    return uids[:count]


def test_150_sop_classes(orthanc: Any, tmp_path: Path) -> None:
    """150 SOP classes, more than one association's 128 contexts, all arrive."""
    folder = tmp_path / "classes"
    folder.mkdir()
    expected: dict[str, str] = {}
    for index, sop_class in enumerate(storage_sop_classes(150)):
        dataset = Dataset()
        dataset.SOPClassUID = sop_class
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.150.{index + 1}"
        dataset.PatientID = "CLASSES"
        dataset.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.150.1000"
        dataset.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.150.2{index:03d}"
        dataset.Modality = "OT"
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.save_as(folder / f"object{index:03d}.dcm", enforce_file_format=True)
        expected[dataset.SOPInstanceUID] = sop_class

    scu = StoreScu(f"127.0.0.1:{orthanc.port}", called_ae_title="ORTHANC",
                   transcode_workers=1)
    scu.add_directory(folder)
    errors: list[str] = []
    result = scu.send(on_file_error=lambda err, event: errors.append(
        event.data["error"]))

    assert errors == []
    assert (result.successful, result.failed, result.total_files) == (150, 0, 150)
    stored = stored_instances(orthanc)
    assert {uid: tags["SOPClassUID"] for uid, tags in stored.items()} == expected
