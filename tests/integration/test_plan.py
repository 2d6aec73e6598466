"""``plan_transfer``: what a send would do, checked against real receivers.

Each test plans the same small set of files against a receiver with known
acceptance rules and checks every group's action and wire syntax, and that
the receiver stored nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from e2e_support import PYDICOM_TEST_FILES, load_receivers, received_files
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from engine.errors import ConnectionFailedError
from engine.plan import PlanAction, PlanGroup, TransferPlan, format_plan, plan_transfer

receivers = load_receivers()
pytestmark = pytest.mark.dcmtk

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SAMPLES = ("CT_small.dcm", "MR_small_RLE.dcm", "test-SR.dcm")


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(PYDICOM_TEST_FILES / name, folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    whole = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(whole[:len(whole) // 2])
    return folder


def group_of(plan: TransferPlan, sop_class: str) -> PlanGroup:
    matches = [group for group in plan.groups if group.sop_class_uid == sop_class]
    assert len(matches) == 1, plan.groups
    return matches[0]


def test_plan_storescp_accepting_all(tmp_path: Path, samples: Path) -> None:
    """With +xa every file goes as it is; the truncated one is unreadable."""
    out = tmp_path / "scp"
    out.mkdir()
    with receivers.start_storescp(out, "+xa") as scp:
        plan = plan_transfer(f"127.0.0.1:{scp.port}", [samples])

    assert plan.associations == 1
    assert plan.total_files == 4
    assert len(plan.skipped) == 1
    assert [failure.file for failure in plan.failed] == [str(samples / "truncated.dcm")]
    assert "the file ends inside the value of (7FE0,0010)" in plan.failed[0].error
    for sop_class in (CTImageStorage, MR_STORAGE, SR_STORAGE):
        group = group_of(plan, sop_class)
        assert group.action is PlanAction.SEND_AS_IS
        assert group.wire_transfer_syntax == group.file_transfer_syntax
    assert received_files(out) == []


def test_plan_storescp_default_syntaxes(tmp_path: Path, samples: Path) -> None:
    """Without +xa storescp refuses RLE, so the RLE file is decompressed."""
    out = tmp_path / "scp"
    out.mkdir()
    with receivers.start_storescp(out) as scp:
        plan = plan_transfer(f"127.0.0.1:{scp.port}", [samples])

    mr = group_of(plan, MR_STORAGE)
    assert mr.file_transfer_syntax == RLELossless
    assert mr.action is PlanAction.DECOMPRESS
    assert mr.wire_transfer_syntax == ExplicitVRLittleEndian
    assert mr.reason == "the receiver refused RLE Lossless"
    assert group_of(plan, CTImageStorage).action is PlanAction.SEND_AS_IS
    lines = format_plan(plan)
    assert lines[0].startswith("Plan for 4 files to 127.0.0.1:")
    assert ("  1 file: MR Image Storage in RLE Lossless: decompressed to Explicit VR "
            "Little Endian (the receiver refused RLE Lossless)") in lines
    assert lines[-1] == ("3 to send, 0 refused, 1 unreadable, 1 skipped (not DICOM "
                         "or DICOMDIR)")
    assert received_files(out) == []


def test_plan_forced_compressed_syntax(tmp_path: Path, samples: Path) -> None:
    """A compressed target re-encodes images; the SR stays uncompressed."""
    out = tmp_path / "scp"
    out.mkdir()
    with receivers.start_storescp(out, "+xa") as scp:
        plan = plan_transfer(f"127.0.0.1:{scp.port}", [samples],
                             transfer_syntax="JPEG2000Lossless")
        lossy = plan_transfer(f"127.0.0.1:{scp.port}", [samples],
                              transfer_syntax="JPEGBaseline8Bit")

    ct = group_of(plan, CTImageStorage)
    assert ct.action is PlanAction.REENCODE
    assert ct.wire_transfer_syntax == JPEG2000Lossless
    sr = group_of(plan, SR_STORAGE)
    assert sr.target_transfer_syntax == ExplicitVRLittleEndian
    assert sr.action is PlanAction.SEND_AS_IS
    refused = group_of(lossy, CTImageStorage)
    assert refused.action is PlanAction.REFUSE
    assert refused.target_transfer_syntax == JPEGBaseline8Bit
    assert "is lossy; allow lossy compression" in str(refused.reason)
    assert lossy.refused_files == 2


def test_plan_implicit_only_receiver(samples: Path) -> None:
    """A receiver of Implicit VR Little Endian only: everything goes implicit."""
    with receivers.start_pynetdicom_scp(
            transfer_syntaxes=[ImplicitVRLittleEndian]) as scp:
        plan = plan_transfer(f"127.0.0.1:{scp.port}", [samples])

    ct = group_of(plan, CTImageStorage)
    assert ct.action is PlanAction.REENCODE
    assert ct.wire_transfer_syntax == ImplicitVRLittleEndian
    assert ct.reason == "the receiver refused Explicit VR Little Endian"
    mr = group_of(plan, MR_STORAGE)
    assert mr.action is PlanAction.DECOMPRESS
    assert mr.wire_transfer_syntax == ImplicitVRLittleEndian


def test_plan_refused_sop_class(samples: Path) -> None:
    """A SOP class the receiver does not support is refused with its reason."""
    with receivers.start_pynetdicom_scp(abstract_syntaxes=[CTImageStorage]) as scp:
        plan = plan_transfer(f"127.0.0.1:{scp.port}", [samples])

    assert group_of(plan, CTImageStorage).action is PlanAction.SEND_AS_IS
    sr = group_of(plan, SR_STORAGE)
    assert sr.action is PlanAction.REFUSE
    assert sr.wire_transfer_syntax is None
    assert "ask its administrator to accept this SOP class" in str(sr.reason)


def test_plan_over_128_contexts(tmp_path: Path) -> None:
    """Beyond 128 contexts the proposal is split over several associations."""
    import pydicom

    folder = tmp_path / "many"
    folder.mkdir()
    dataset = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    for index in range(50):
        # 50 SOP classes, three contexts each: 150 in all.
        dataset.SOPClassUID = f"1.2.826.0.1.3680043.2.1143.99.{index}"
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        dataset.save_as(folder / f"{index}.dcm")
    with receivers.start_pynetdicom_scp(
            abstract_syntaxes=[f"1.2.826.0.1.3680043.2.1143.99.{i}"
                               for i in range(50)]) as scp:
        plan = plan_transfer(f"127.0.0.1:{scp.port}", [folder])

    assert plan.contexts_proposed == 100
    assert plan.associations == 1
    assert all(group.action is PlanAction.SEND_AS_IS for group in plan.groups)


def test_plan_no_receiver(samples: Path) -> None:
    port = receivers.free_port()
    with pytest.raises(ConnectionFailedError, match="could not establish association"):
        plan_transfer(f"127.0.0.1:{port}", [samples])


def test_plan_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file or directory"):
        plan_transfer("127.0.0.1:104", [tmp_path / "nowhere"])
