"""S3 sources: a bucket on a local moto server, sent to DCMTK storescp."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset

from conftest import STORESCP_ACCEPT_ALL
from e2e_support import (
    PYDICOM_TEST_FILES,
    load_receivers,
    read,
    received_files,
)
from engine import StoreScu
from engine.reports import Outcome
from engine.s3 import S3Settings, S3Source, s3_source, s3_sources
from engine.sources import SkippedFile, source_from_path

pytestmark = pytest.mark.dcmtk
receivers = load_receivers()

BUCKET = "dicom-archive"
CORPUS_PREFIX = "corpus/"
SMALL_PREFIX = "small/"
SMALL_FILES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm",
               "JPEG2000.dcm", "SC_rgb_rle.dcm")
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    """A moto S3 server on loopback and a client for filling its buckets."""

    def __init__(self, endpoint: str, client: Any) -> None:
        self.endpoint = endpoint
        self.client = client
        self.settings = S3Settings(endpoint_url=endpoint)

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)
        return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="module")
def s3_server(corpus_dir: Path) -> Iterator[S3Server]:
    """A moto server holding the corpus under ``corpus/`` and a few small files."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("moto[server] is not installed; CI needs the test extra")
        pytest.skip("moto[server] is not installed")
    import boto3

    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_CREDENTIALS.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)

        port = receivers.free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket=BUCKET)
            s3 = S3Server(endpoint, client)
            for path in sorted(corpus_dir.rglob("*")):
                if path.is_file() and path.suffix == ".dcm":
                    s3.put(CORPUS_PREFIX + path.relative_to(corpus_dir).as_posix(),
                           path.read_bytes())
            s3.put(CORPUS_PREFIX + "README.txt", b"not DICOM")
            s3.put(CORPUS_PREFIX + "folder/", b"")
            for name in SMALL_FILES:
                s3.put(SMALL_PREFIX + name, (PYDICOM_TEST_FILES / name).read_bytes())
            yield s3
        finally:
            server.stop()


def dataset_bytes(path: Path) -> bytes:
    """Return a Part 10 file's data set, after its preamble and file meta."""
    source = source_from_path(path)
    assert not isinstance(source, SkippedFile) and source.header is not None
    return path.read_bytes()[source.header.dataset_offset:]


def test_headers_match_local_files(s3_server: S3Server, corpus_dir: Path) -> None:
    """Ranged GETs read the same header as the local file, for the whole corpus."""
    found = list(s3_sources(f"s3://{BUCKET}/{CORPUS_PREFIX}", s3_server.settings))

    skipped = [item.path for item in found if isinstance(item, SkippedFile)]
    assert skipped == [f"s3://{BUCKET}/{CORPUS_PREFIX}README.txt"]
    sources = [item for item in found if isinstance(item, S3Source)]
    assert len(sources) == len(list(corpus_dir.rglob("*.dcm")))
    for source in sources:
        local = source_from_path(corpus_dir / source.key[len(CORPUS_PREFIX):])
        assert isinstance(local, type(source).__mro__[1])
        assert source.header == local.header, source.name
        assert (source.error is None) == (local.error is None), source.name
        if source.header is not None:
            assert source.size == local.size, source.name


def test_header_beyond_first_range(s3_server: S3Server, tmp_path: Path) -> None:
    """A file meta group longer than the first ranged GET needs more requests."""
    dataset = read(PYDICOM_TEST_FILES / "CT_small.dcm")
    meta = FileMetaDataset(dataset.file_meta)
    meta.PrivateInformationCreatorUID = "1.2.3.4"
    meta.PrivateInformation = b"\x00" * 20_000
    dataset.file_meta = meta
    local = tmp_path / "long_meta.dcm"
    dataset.save_as(local, enforce_file_format=True)
    url = s3_server.put("long/long_meta.dcm", local.read_bytes())

    source = s3_source(url, s3_server.settings)

    assert isinstance(source, S3Source)
    assert source.header is not None
    assert source.header.dataset_offset > 20_000
    assert source.header == source_from_path(local).header


def send_corpus(scu: StoreScu) -> tuple[Any, list[str]]:
    names: list[str] = []
    result = scu.send(on_file_sent=lambda err, event: names.append(event.data["file"]))
    return result, names


def test_send_corpus_from_s3(s3_server: S3Server, storescp: Any,
                             corpus_dir: Path, tmp_path: Path) -> None:
    """The corpus from S3 arrives exactly as the same files sent from disk do."""
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    with receivers.start_storescp(local_dir, *STORESCP_ACCEPT_ALL) as local_scp:
        local_scu = StoreScu(f"127.0.0.1:{local_scp.port}", concurrency=2,
                             transcode_workers=1)
        local_scu.add_directory(corpus_dir)
        local_result, _ = send_corpus(local_scu)
    scu = StoreScu(f"127.0.0.1:{storescp.port}", concurrency=2, transcode_workers=1,
                   s3_endpoint_url=s3_server.endpoint,
                   report=tmp_path / "report.jsonl")
    scu.add_directory(f"s3://{BUCKET}/{CORPUS_PREFIX}")

    result, sent_names = send_corpus(scu)

    prefix = f"s3://{BUCKET}/{CORPUS_PREFIX}"
    assert all(name.startswith(prefix) for name in sent_names)
    assert result.skipped == 1  # README.txt; only .dcm files were uploaded
    assert result.successful == local_result.successful
    assert sorted(Path(failure.file).name for failure in result.failures) == sorted(
        Path(failure.file).name for failure in local_result.failures)

    # What arrived is byte for byte what the same files sent from disk gave.
    stored = [record for record in result.records if record.outcome is Outcome.STORED]
    arrived = sorted(map(dataset_bytes, received_files(storescp.out_dir)))
    assert len(arrived) == len(stored)
    assert arrived == sorted(map(dataset_bytes, received_files(local_dir)))


def test_fetching_is_bounded(s3_server: S3Server, storescp: Any,
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects are fetched as the queues take them, and deleted once sent."""
    spool_root = tmp_path / "spool-root"
    spool_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_root))
    on_disk: list[int] = []

    def count_fetched(err: Exception | None, event: Any) -> None:
        on_disk.append(len(list(spool_root.glob("dicomsend-spool-*/*.s3"))))

    scu = StoreScu(f"127.0.0.1:{storescp.port}", concurrency=1, transcode_workers=1,
                   s3_endpoint_url=s3_server.endpoint)
    scu.add_directory(f"s3://{BUCKET}/{CORPUS_PREFIX}")
    result = scu.send(on_file_sent=count_fetched, on_file_error=count_fetched)

    assert result.successful > 40
    # One association: at most the ready queue (4 batches of one object),
    # one object in the feeder's hands and one being sent.
    assert max(on_disk) <= 6, on_disk
    assert list(spool_root.iterdir()) == []


def test_transcode_from_s3(s3_server: S3Server, storescp: Any) -> None:
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1,
                   transfer_syntax="JPEG2000Lossless",
                   s3_endpoint_url=s3_server.endpoint)
    scu.add_directory(f"s3://{BUCKET}/{SMALL_PREFIX}")

    result = scu.send()

    assert result.failed == 0, result.failures
    assert result.successful == len(SMALL_FILES)
    arrived = [read(path) for path in received_files(storescp.out_dir)]
    assert {str(item.file_meta.TransferSyntaxUID) for item in arrived} == {
        pydicom.uid.JPEG2000Lossless}


def test_add_single_object(s3_server: S3Server, storescp: Any,
                           tmp_path: Path) -> None:
    files: list[str] = []
    url = f"s3://{BUCKET}/{SMALL_PREFIX}CT_small.dcm"
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1,
                   s3_endpoint_url=s3_server.endpoint,
                   report=tmp_path / "report.jsonl")
    scu.add_file(url)
    scu.add_file(url)  # queued once

    result = scu.send(on_file_sent=lambda err, event: files.append(event.data["file"]))

    assert result.successful == 1
    assert files == [url]
    assert result.records[0].file_bytes == (PYDICOM_TEST_FILES
                                            / "CT_small.dcm").stat().st_size


def test_object_changed_after_adding(s3_server: S3Server, storescp: Any) -> None:
    url = s3_server.put("changing/CT.dcm",
                        (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
    scu = StoreScu(f"127.0.0.1:{storescp.port}", transcode_workers=1,
                   s3_endpoint_url=s3_server.endpoint)
    scu.add_file(url)
    s3_server.put("changing/CT.dcm", (PYDICOM_TEST_FILES / "MR_small.dcm").read_bytes())

    result = scu.send()

    assert result.failed == 1
    assert "changed after it was added" in result.failures[0].error
    assert received_files(storescp.out_dir) == []


@pytest.mark.parametrize(
    ("url", "directory", "error", "message"),
    [(f"s3://{BUCKET}/{SMALL_PREFIX}missing.dcm", False, FileNotFoundError,
      r"Unable to read 's3://dicom-archive/small/missing\.dcm' as the object does "
      r"not exist"),
     ("s3://no-such-bucket/a.dcm", False, FileNotFoundError,
      r"as the bucket does not exist"),
     ("s3://no-such-bucket/prefix/", True, FileNotFoundError,
      r"Unable to list 's3://no-such-bucket/prefix/' as the bucket does not exist"),
     (f"s3://{BUCKET}/nothing-here", True, FileNotFoundError,
      r"Unable to add 's3://dicom-archive/nothing-here/' as no object was found"),
     (f"s3://{BUCKET}/{SMALL_PREFIX}", False, ValueError,
      r"the key is missing or names a prefix; use add_directory\(\)"),
     ("s3:///key", False, ValueError, r"the bucket name is missing")],
)
def test_invalid_s3_sources(s3_server: S3Server, url: str, directory: bool,
                            error: type[Exception], message: str) -> None:
    scu = StoreScu("127.0.0.1:11112", s3_endpoint_url=s3_server.endpoint)
    with pytest.raises(error, match=message):
        if directory:
            scu.add_directory(url)
        else:
            scu.add_file(url)


def test_cli_sends_prefix(s3_server: S3Server, storescp: Any) -> None:
    """The endpoint comes from --s3-endpoint, or from AWS_ENDPOINT_URL_S3."""
    env = {**os.environ, **FAKE_CREDENTIALS, "PYTHONWARNINGS": "ignore"}
    env.pop("AWS_PROFILE", None)
    base = [sys.executable, "-m", "engine.cli", "send", f"127.0.0.1:{storescp.port}",
            f"s3://{BUCKET}/{SMALL_PREFIX}", "-w", "1"]

    with_option = subprocess.run([*base, "--s3-endpoint", s3_server.endpoint],
                                 capture_output=True, text=True, timeout=120, env=env)
    from_environment = subprocess.run(
        base, capture_output=True, text=True, timeout=120,
        env={**env, "AWS_ENDPOINT_URL_S3": s3_server.endpoint})

    for completed in (with_option, from_environment):
        assert completed.returncode == 0, completed.stderr
        assert f"Stored {len(SMALL_FILES)} of {len(SMALL_FILES)} files" in (
            completed.stdout)
    assert len(received_files(storescp.out_dir)) == 2 * len(SMALL_FILES)


def test_cli_missing_object_is_usage_error(s3_server: S3Server) -> None:
    env = {**os.environ, **FAKE_CREDENTIALS, "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run(
        [sys.executable, "-m", "engine.cli", "send", "127.0.0.1:11112",
         f"s3://{BUCKET}/{SMALL_PREFIX}missing.dcm",
         "--s3-endpoint", s3_server.endpoint],
        capture_output=True, text=True, timeout=120, env=env)

    assert completed.returncode == 2
    assert "as the object does not exist" in completed.stderr


def test_header_without_file_meta(s3_server: S3Server) -> None:
    """A big endian data set without file meta is read through the ranged reader."""
    data = (PYDICOM_TEST_FILES / "ExplVR_BigEndNoMeta.dcm").read_bytes()
    url = s3_server.put("nometa/ExplVR_BigEndNoMeta.dcm", data)

    source = s3_source(url, s3_server.settings)

    local = source_from_path(PYDICOM_TEST_FILES / "ExplVR_BigEndNoMeta.dcm")
    assert isinstance(source, S3Source)
    assert source.header == local.header
    assert source.header is not None and not source.header.has_file_meta
    assert source.size == len(data)
