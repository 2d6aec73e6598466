"""Storage commitment against Orthanc and pynetdicom SCPs on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from e2e_support import PYDICOM_TEST_FILES, instance_uid, load_receivers, read
from engine import AssociationRejectedError, ConnectionFailedError, StoreScu
from engine.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
    CommitmentError,
    commit_instances,
)
from engine.options import Timeouts
from engine.reports import Outcome

pytestmark = pytest.mark.orthanc
receivers = load_receivers()

SMALL_FILES = [PYDICOM_TEST_FILES / name
               for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm")]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CALLING_AE = "COMMIT-SCU"
SHORT_TIMEOUTS = Timeouts(connect=5, acse=5, dimse=10, network=10)


@pytest.fixture(scope="module")
def listen_port() -> int:
    """The port we listen on for reports; Orthanc is configured with it."""
    return int(receivers.free_port())


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory,
            listen_port: int) -> Iterator[Any]:
    """Orthanc knowing our AE title, so it can open an association back to us."""
    work_dir = tmp_path_factory.mktemp("orthanc")
    modalities = {"dicomsend": [CALLING_AE, "127.0.0.1", listen_port]}
    with receivers.start_orthanc_pacs(work_dir, DicomModalities=modalities) as server:
        yield server


def pairs_of(paths: list[Path]) -> list[tuple[str, str]]:
    pairs = []
    for path in paths:
        dataset = read(path)
        pairs.append((str(dataset.SOPClassUID), instance_uid(dataset)))
    return pairs


def scu_for(server: Any, **options: Any) -> StoreScu:
    scu = StoreScu(f"127.0.0.1:{server.port}", calling_ae_title=CALLING_AE,
                   called_ae_title="ORTHANC", transcode_workers=1,
                   connect_timeout=5, **options)
    for path in SMALL_FILES:
        scu.add_file(path)
    return scu


# Orthanc: the report comes on a new association


def test_send_with_commit_all_committed(orthanc: Any, listen_port: int,
                                        tmp_path: Path) -> None:
    report_path = tmp_path / "report.jsonl"
    scu = scu_for(orthanc, commit=True, commit_listen_port=listen_port,
                  commit_timeout=30, report=report_path)

    result = scu.send()

    assert result.failed == 0, result.failures
    assert result.successful == len(SMALL_FILES)
    assert result.commitment is not None
    assert result.commitment.report_received
    assert result.commitment.report_association == "new"
    assert len(result.commitment.committed) == len(SMALL_FILES)
    outcomes = [record.outcome for record in result.records]
    assert outcomes.count(Outcome.STORED) == len(SMALL_FILES)
    assert outcomes.count(Outcome.COMMITTED) == len(SMALL_FILES)
    lines = [json.loads(line) for line in report_path.read_text().splitlines()]
    assert [line["outcome"] for line in lines[-len(SMALL_FILES):]] == (
        ["committed"] * len(SMALL_FILES))


def test_commit_unknown_instance_fails(orthanc: Any, listen_port: int) -> None:
    """Orthanc commits the stored instance and names the missing one."""
    stored = pairs_of(SMALL_FILES[:1])
    scu = scu_for(orthanc)
    assert scu.send().failed == 0
    missing = (CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.8.498.1")

    result = commit_instances(f"127.0.0.1:{orthanc.port}", CALLING_AE, "ORTHANC",
                              [*stored, missing], SHORT_TIMEOUTS, listen_port,
                              report_timeout=30)

    assert result.report_received
    assert [(ref.sop_class_uid, ref.sop_instance_uid)
            for ref in result.committed] == stored
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure.sop_instance_uid == missing[1]
    assert failure.failure_reason == 0x0112
    assert "No such object instance (0x0112)" in failure.reason
    assert not result.all_committed


def test_commit_without_listener_times_out(orthanc: Any) -> None:
    """Orthanc sends its report on a new association, which no listener accepts."""
    scu = scu_for(orthanc, commit=True, commit_timeout=1.5)

    result = scu.send()

    assert result.successful == 0
    assert result.failed == len(SMALL_FILES)
    assert result.commitment is not None
    assert not result.commitment.report_received
    for failure in result.failures:
        assert "no storage commitment report arrived within 1.5 s" in failure.error
        assert failure.error.startswith("Stored '")
    not_committed = [record for record in result.records
                     if record.outcome is Outcome.NOT_COMMITTED]
    assert len(not_committed) == len(SMALL_FILES)


def test_commit_listen_port_in_use(orthanc: Any) -> None:
    with receivers.start_pynetdicom_scp() as busy:
        with pytest.raises(ConnectionFailedError, match=r"Unable to listen on "
                                                        r"127\.0\.0\.1:\d+"):
            commit_instances(f"127.0.0.1:{orthanc.port}", CALLING_AE, "ORTHANC",
                             pairs_of(SMALL_FILES[:1]), SHORT_TIMEOUTS, busy.port,
                             report_timeout=1)


# pynetdicom SCPs: the report on the same association, refusals


def report_dataset(transaction_uid: str, committed: list[tuple[str, str]],
                   failed: list[tuple[str, str, int]]) -> Dataset:
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    if items:
        dataset.ReferencedSOPSequence = items
    failed_items = []
    for sop_class, sop_instance, reason in failed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.FailureReason = reason
        failed_items.append(item)
    if failed_items:
        dataset.FailedSOPSequence = failed_items
    return dataset


def start_reporting_scp(commit_all_but: set[str]) -> Any:
    """A commitment SCP that reports on the N-ACTION's own association."""
    from pynetdicom import evt

    threads: list[threading.Thread] = []

    def handle_action(event: Any) -> tuple[int, None]:
        request = event.action_information
        transaction = str(request.TransactionUID)
        committed, failed = [], []
        for item in request.ReferencedSOPSequence:
            pair = (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            if pair[1] in commit_all_but:
                failed.append((*pair, 0x0110))
            else:
                committed.append(pair)
        # The last requested instance is left out of the report on purpose.
        committed = committed[:-1] if not failed else committed
        association = event.assoc

        def send_report() -> None:
            time.sleep(0.2)
            association.send_n_event_report(
                report_dataset(transaction, committed, failed),
                2 if failed else 1,
                STORAGE_COMMITMENT_PUSH_MODEL,
                STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
            )

        thread = threading.Thread(target=send_report, daemon=True)
        threads.append(thread)
        thread.start()
        return 0x0000, None

    return receivers.start_pynetdicom_scp(
        abstract_syntaxes=[STORAGE_COMMITMENT_PUSH_MODEL],
        handlers=[(evt.EVT_N_ACTION, handle_action)],
    )


def test_report_on_same_association_with_failure() -> None:
    pairs = pairs_of(SMALL_FILES)
    with start_reporting_scp(commit_all_but={pairs[1][1]}) as scp:
        result = commit_instances(f"127.0.0.1:{scp.port}", CALLING_AE, "ANY-SCP",
                                  pairs, SHORT_TIMEOUTS, report_timeout=10)

    assert result.report_received
    assert result.report_association == "same"
    assert [ref.sop_instance_uid for ref in result.committed] == [
        pairs[0][1], pairs[2][1]]
    assert len(result.failures) == 1
    assert result.failures[0].sop_instance_uid == pairs[1][1]
    assert result.failures[0].failure_reason == 0x0110
    assert "Processing failure (0x0110)" in result.failures[0].reason


def test_report_leaving_out_an_instance() -> None:
    pairs = pairs_of(SMALL_FILES)
    with start_reporting_scp(commit_all_but=set()) as scp:
        result = commit_instances(f"127.0.0.1:{scp.port}", CALLING_AE, "ANY-SCP",
                                  pairs, SHORT_TIMEOUTS, report_timeout=10)

    assert len(result.committed) == 2
    assert [failure.sop_instance_uid for failure in result.failures] == [pairs[2][1]]
    assert "left it out of its storage commitment report" in result.failures[0].reason


def test_action_failure_status_raises() -> None:
    from pynetdicom import evt

    def refuse(event: Any) -> tuple[int, None]:
        return 0x0213, None  # Resource limitation

    with receivers.start_pynetdicom_scp(
            abstract_syntaxes=[STORAGE_COMMITMENT_PUSH_MODEL],
            handlers=[(evt.EVT_N_ACTION, refuse)]) as scp:
        with pytest.raises(CommitmentError,
                           match=r"rejected the storage commitment request: "
                                 r"Resource limitation \(0x0213\)"):
            commit_instances(f"127.0.0.1:{scp.port}", CALLING_AE, "ANY-SCP",
                             pairs_of(SMALL_FILES[:1]), SHORT_TIMEOUTS,
                             report_timeout=2)


def test_receiver_without_commitment(storescp: Any) -> None:
    """DCMTK storescp stores but rejects the Storage Commitment SOP class."""
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1, commit=True,
                   commit_timeout=2)
    for path in SMALL_FILES:
        scu.add_file(path)

    result = scu.send()

    assert result.successful == 0
    assert result.failed == len(SMALL_FILES)
    assert result.commitment is None
    for failure in result.failures:
        assert "rejected the Storage Commitment Push Model SOP class" in failure.error


def test_commit_rejected_association() -> None:
    with receivers.start_pynetdicom_scp(
            ae_title="STRICT", require_called_aet=True,
            abstract_syntaxes=[STORAGE_COMMITMENT_PUSH_MODEL]) as scp:
        with pytest.raises(AssociationRejectedError, match="rejected the storage "
                                                           "commitment association"):
            commit_instances(f"127.0.0.1:{scp.port}", CALLING_AE, "WRONG",
                             pairs_of(SMALL_FILES[:1]), SHORT_TIMEOUTS)


def test_commit_nothing_listening() -> None:
    port = receivers.free_port()
    with pytest.raises(ConnectionFailedError,
                       match="could not establish association with 127.0.0.1"):
        commit_instances(f"127.0.0.1:{port}", CALLING_AE, "ANY-SCP",
                         pairs_of(SMALL_FILES[:1]), SHORT_TIMEOUTS)


@pytest.mark.parametrize(
    ("instances", "listen_port", "message"),
    [([], None, r"Invalid instances: expected at least one"),
     ([("1.2", "1.2.3")], 0, r"Invalid listen_port 0"),
     ([("1.2", "1.2.3")], 70000, r"Invalid listen_port 70000")],
)
def test_commit_invalid_arguments(instances: list[tuple[str, str]],
                                  listen_port: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        commit_instances("127.0.0.1:11112", CALLING_AE, "ANY-SCP", instances,
                         SHORT_TIMEOUTS, listen_port)


@pytest.mark.parametrize("port", [0, 65536, "104", True])
def test_commit_listen_port_option_invalid(port: Any) -> None:
    with pytest.raises(ValueError, match=r"Invalid commit_listen_port .*: the port "
                                         r"must be a number from 1 to 65535"):
        StoreScu("127.0.0.1:11112", commit=True, commit_listen_port=port)
