"""The StoreScu API against real receivers: options, callbacks, inputs, errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import JPEG2000Lossless

from e2e_support import (
    PYDICOM_TEST_FILES,
    instance_uid,
    load_receivers,
    read,
    received_files,
)
from engine import (
    AssociationRejectedError,
    ConnectionFailedError,
    EventType,
    StoreScu,
)

pytestmark = pytest.mark.dcmtk
receivers = load_receivers()

SMALL_FILES = [PYDICOM_TEST_FILES / name for name in
               ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "SC_rgb_small_odd.dcm")]


# Options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"addr": "127.0.0.1:0"},
         r"Invalid addr '127\.0\.0\.1:0': the port must be a number from 1 to 65535"),
        ({"addr": "127.0.0.1:65536"}, r"Invalid addr .*1 to 65535"),
        ({"addr": "127.0.0.1:http"}, r"Invalid addr '127\.0\.0\.1:http'"),
        ({"addr": ""}, r"Invalid addr '': expected 'host:port', 'host' or"),
        ({"addr": "[::1"}, r"Invalid addr '\[::1': an IPv6 address needs the form"),
        ({"addr": ":104"}, r"Invalid addr ':104': the host is missing"),
        ({"calling_ae_title": ""},
         r"Invalid calling_ae_title '': an AE title must not be empty or all spaces"),
        ({"calling_ae_title": "    "}, r"Invalid calling_ae_title '    '"),
        ({"called_ae_title": "A" * 17},
         r"Invalid called_ae_title 'A{17}': an AE title has at most 16 "
         r"characters, this one has 17"),
        ({"called_ae_title": "BAD\\AE"},
         r"Invalid called_ae_title .*printable ASCII characters other than backslash"),
        ({"calling_ae_title": "TAB\tAE"}, r"Invalid calling_ae_title 'TAB\\tAE'"),
        ({"max_pdu_length": 4095},
         r"Invalid max_pdu_length 4095: allowed values are 4096 to 131072 bytes"),
        ({"max_pdu_length": 131073}, r"Invalid max_pdu_length 131073"),
        ({"max_pdu_length": "16384"}, r"Invalid max_pdu_length '16384'"),
        ({"concurrency": 0}, r"Invalid concurrency 0: allowed values are 1 to"),
        ({"concurrency": True}, r"Invalid concurrency True"),
        ({"transcode_workers": -1}, r"Invalid transcode_workers -1"),
        ({"transfer_syntax": "NoSuchSyntax"}, r"NoSuchSyntax.*ExplicitVRLittleEndian"),
        ({"start_method": "thread"},
         r"Invalid start_method 'thread': expected one of fork, spawn, forkserver"),
    ],
)
def test_invalid_option_raises(kwargs: dict[str, Any], message: str) -> None:
    """Each bad option raises ValueError naming it, the value and what is allowed."""
    arguments = {"addr": "127.0.0.1:11112", **kwargs}
    addr = arguments.pop("addr")
    with pytest.raises(ValueError, match=message):
        StoreScu(addr, **arguments)


def test_option_defaults() -> None:
    scu = StoreScu("localhost")
    assert scu.options.address.host == "localhost"
    assert scu.options.address.port == 104
    assert scu.options.calling_ae_title == "STORE-SCU"
    assert scu.options.called_ae_title == "ANY-SCP"
    assert scu.options.max_pdu_length == 16384
    assert scu.options.transfer_syntax is None
    assert scu.options.concurrency == 1
    assert scu.options.transcode_workers >= 1


@pytest.mark.parametrize(("name", "uid"), [
    ("JPEGBaseline", "1.2.840.10008.1.2.4.50"),
    ("JPEG2000Lossless", "1.2.840.10008.1.2.4.90"),
    ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1"),
])
def test_transfer_syntax_names(name: str, uid: str) -> None:
    scu = StoreScu("[::1]:104", transfer_syntax=name, allow_lossy=True)
    assert scu.options.transfer_syntax == uid


def test_lossy_target_needs_allow_lossy() -> None:
    with pytest.raises(ValueError, match=(
            "Invalid transfer_syntax JPEGBaseline8Bit: it is lossy, so it needs "
            r"allow_lossy=True \(--allow-lossy on the command line\)")):
        StoreScu("127.0.0.1:104", transfer_syntax="JPEGBaseline")


# Callbacks and results


def recorder(calls: list[tuple[str, Any, Any]], name: str) -> Any:
    def callback(err: Exception | None, event: Any) -> None:
        calls.append((name, err, event))
    return callback


def send_recorded(scu: StoreScu) -> tuple[Any, list[tuple[str, Any, Any]]]:
    calls: list[tuple[str, Any, Any]] = []
    result = scu.send(**{name: recorder(calls, name) for name in (
        "on_transfer_started", "on_file_sending", "on_file_sent", "on_file_error",
        "on_transfer_completed")})
    return result, calls


@pytest.mark.parametrize("concurrency", [1, 3])
def test_callbacks_order_and_fields(storescp: Any, tmp_path: Path,
                                    concurrency: int) -> None:
    """started first, sending before sent or error per file, completed last."""
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not a DICOM file")
    scu = StoreScu(f"127.0.0.1:{storescp.port}", concurrency=concurrency,
                   transfer_syntax=JPEG2000Lossless, transcode_workers=2)
    for path in SMALL_FILES:
        scu.add_file(path)
    scu.add_file(not_dicom)

    result, calls = send_recorded(scu)

    assert all(err is None for _, err, _ in calls)
    assert calls[0][0] == "on_transfer_started"
    assert calls[0][2].type is EventType.TRANSFER_STARTED
    assert calls[0][2].data == {"total_files": 5}
    assert calls[-1][0] == "on_transfer_completed"
    completed = calls[-1][2].data
    assert completed["total_files"] == 5
    assert completed["successful"] == 4
    assert completed["failed"] == 1
    assert completed["duration_seconds"] > 0
    assert isinstance(calls[-1][2].message, str)

    names = [str(path) for path in SMALL_FILES]
    for name in names:
        per_file = [(kind, event) for kind, _, event in calls
                    if event.data.get("file") == name]
        assert [kind for kind, _ in per_file] == ["on_file_sending", "on_file_sent"]
        sending, sent = per_file[0][1].data, per_file[1][1].data
        uid = instance_uid(read(name))
        assert sending["sop_instance_uid"] == uid
        assert sent["sop_instance_uid"] == uid
        assert sending["sop_class_uid"] == str(read(name).SOPClassUID)
        assert sent["sop_class_uid"] == sending["sop_class_uid"]
        assert sent["transfer_syntax"] in (JPEG2000Lossless, "1.2.840.10008.1.2.1")
        assert sent["duration_seconds"] >= 0

    errors = [event for kind, _, event in calls if kind == "on_file_error"]
    assert len(errors) == 1
    assert errors[0].data["file"] == str(not_dicom)
    assert str(not_dicom) in errors[0].data["error"]
    assert result.successful == 4
    assert result.failed == 1
    assert result.total_files == 5
    assert result.warnings == ()
    assert len(received_files(storescp.out_dir)) == 4


def test_error_event_has_file_fields(storescp: Any) -> None:
    """A file the transcoder rejects reports its UIDs and its own syntax."""
    source = PYDICOM_TEST_FILES / "rtdose.dcm"
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transfer_syntax=JPEG2000Lossless,
                   transcode_workers=1)
    scu.add_file(source)

    result, calls = send_recorded(scu)

    errors = [event.data for kind, _, event in calls if kind == "on_file_error"]
    assert result.failed == 1
    assert errors[0]["file"] == str(source)
    assert errors[0]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.481.2"
    assert errors[0]["file_transfer_syntax"] == "1.2.840.10008.1.2"
    assert "Bits Stored 32" in errors[0]["error"]


def test_raising_callback_is_logged(storescp: Any,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises is logged with its traceback; the batch goes on."""
    seen: list[str] = []

    def broken(err: Exception | None, event: Any) -> None:
        seen.append(event.data["file"])
        raise RuntimeError("callback bug")

    scu = StoreScu(f"127.0.0.1:{storescp.port}")
    for path in SMALL_FILES:
        scu.add_file(path)
    with caplog.at_level(logging.ERROR, logger="engine"):
        result = scu.send(on_file_sent=broken)

    assert result.successful == len(SMALL_FILES)
    assert len(seen) == len(SMALL_FILES)
    records = [r for r in caplog.records if "callback raised" in r.getMessage()]
    assert len(records) == len(SMALL_FILES)
    assert records[0].exc_info is not None
    assert "callback bug" in str(records[0].exc_info[1])


def test_memory_input_and_clean(storescp: Any) -> None:
    """Bytes from memory are reported by name; clean() empties the queue."""
    data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    scu = StoreScu(f"127.0.0.1:{storescp.port}")
    scu.add_file_from_memory(data, "scan-from-memory")

    result, calls = send_recorded(scu)

    assert result.successful == 1
    sent = [event.data for kind, _, event in calls if kind == "on_file_sent"]
    assert sent[0]["file"] == "scan-from-memory"

    scu.clean()
    assert scu.queued_files == 0
    scu.add_file(PYDICOM_TEST_FILES / "MR_small.dcm")
    second = scu.send()
    assert second.total_files == 1
    assert second.successful == 1
    assert len(received_files(storescp.out_dir)) == 2


def test_memory_input_not_dicom(storescp: Any) -> None:
    scu = StoreScu(f"127.0.0.1:{storescp.port}")
    scu.add_file_from_memory(b"hello", "greeting")
    result = scu.send()
    assert result.failed == 1
    assert "'greeting'" in result.failures[0].error


def test_directory_skips_clutter(storescp: Any, tmp_path: Path) -> None:
    """DICOMDIR, text and empty files are skipped and counted, never sent."""
    folder = tmp_path / "input"
    (folder / "series").mkdir(parents=True)
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", folder / "series" / "IMG0001")
    shutil.copy(PYDICOM_TEST_FILES / "MR_small.dcm", folder / "b.dcm")
    shutil.copy(PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    (folder / "readme.txt").write_text("scan notes")
    (folder / "empty.dcm").write_bytes(b"")
    scu = StoreScu(f"127.0.0.1:{storescp.port}")
    scu.add_directory(folder)

    result = scu.send()

    assert result.total_files == 2
    assert result.successful == 2
    assert result.skipped == 3
    assert sorted(Path(p).name for p in result.skipped_files) == [
        "DICOMDIR", "empty.dcm", "readme.txt"]
    assert len(received_files(storescp.out_dir)) == 2


def test_explicit_empty_file_fails(storescp: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    scu = StoreScu(f"127.0.0.1:{storescp.port}")
    scu.add_file(empty)
    result = scu.send()
    assert result.failed == 1
    assert result.failures[0].error == f"Unable to send '{empty}' as the file is empty"


# Connection failures


def test_nothing_listening_raises() -> None:
    port = receivers.free_port()
    scu = StoreScu(f"127.0.0.1:{port}", connect_timeout=5)
    scu.add_file(SMALL_FILES[0])
    with pytest.raises(ConnectionFailedError,
                       match=rf"could not establish association.*127\.0\.0\.1:{port}"):
        scu.send()


def test_refused_association_raises(tmp_path: Path) -> None:
    """storescp --refuse answers every request with A-ASSOCIATE-RJ."""
    with receivers.start_storescp(tmp_path, "--refuse") as scp:
        scu = StoreScu(f"127.0.0.1:{scp.port}")
        scu.add_file(SMALL_FILES[0])
        with pytest.raises(AssociationRejectedError, match="rejected"):
            scu.send()


def test_called_ae_title_rejected(tmp_path: Path) -> None:
    """A receiver checking its AE title rejects with that reason."""
    from engine.receiver import StorageReceiver

    receiver = StorageReceiver(tmp_path, port=0, ae_title="PACS",
                               require_called_ae_title=True)
    receiver.start()
    try:
        scu = StoreScu(f"127.0.0.1:{receiver.port}", called_ae_title="WRONG")
        scu.add_file(SMALL_FILES[0])
        with pytest.raises(AssociationRejectedError,
                           match=r"rejected.*called AE title not recognised"):
            scu.send()
    finally:
        receiver.stop()


# Start methods


def test_spawn_start_method(storescp: Any) -> None:
    """The pipeline works when every child process starts from scratch."""
    scu = StoreScu(f"127.0.0.1:{storescp.port}", start_method="spawn",
                   concurrency=2, transfer_syntax="RLELossless", transcode_workers=1)
    for path in SMALL_FILES:
        scu.add_file(path)

    result = scu.send()

    assert result.failures == ()
    assert result.successful == len(SMALL_FILES)
    assert len(received_files(storescp.out_dir)) == len(SMALL_FILES)


@pytest.mark.parametrize("target", [None, "ExplicitVRLittleEndian"])
def test_affected_uid_is_data_set_uid(storescp: Any, target: str | None) -> None:
    """The C-STORE carries the data set's SOP Instance UID, not a stale meta one."""
    source = PYDICOM_TEST_FILES / "rtplan.dcm"
    sent = read(source)
    assert sent.file_meta.MediaStorageSOPInstanceUID != sent.SOPInstanceUID
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transfer_syntax=target,
                   transcode_workers=1)
    scu.add_file(source)

    result = scu.send()

    assert result.successful == 1
    (stored,) = received_files(storescp.out_dir)
    assert read(stored).file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
