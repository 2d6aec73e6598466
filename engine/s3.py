"""S3 sources: DICOM objects in a bucket, sent as if they were local files.

``add_file("s3://bucket/key")`` and ``add_directory("s3://bucket/prefix/")``
produce the same ``Source`` records as ``engine.sources``, as
:class:`S3Source`. Adding reads only each object's header, with ranged GETs
(the first 8 KiB, then 64 KiB wherever ``read_header`` reads beyond what
it has, since it walks the data set and seeks past large values). The
presentation contexts of the batch are thus planned before sending, and
nothing is downloaded in full. Listing is lazy, one page of keys at a
time, and headers are read by a few threads in parallel.

The whole object is fetched by :func:`fetch_to_spool` into the pipeline's
spool folder right before a worker or sender needs it. The coordinator's
feeder thread calls it as it feeds the bounded queues, so only the objects
waiting in those queues are on disk at any time; :func:`remove_spooled`
deletes an object's copy once the file has its outcome.

boto3 finds the credentials, region and endpoint as the AWS tools do:
environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``,
``AWS_ENDPOINT_URL_S3``...), ``AWS_PROFILE`` and the shared config files.
``S3Settings`` overrides the endpoint, region and profile.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from engine.errors import DicomSendError, FileError, NotDicomError
from engine.header import read_header
from engine.sources import SkippedFile, Source

logger = logging.getLogger(__name__)

S3_SCHEME = "s3://"
HEADER_RANGE_BYTES = 8192
# Later reads of a header (a long file meta group, or pydicom reading a
# file without one) fetch at least this much per ranged GET.
READ_AHEAD_BYTES = 65536
HEADER_THREADS = 8
# Headers read ahead of the caller while listing, per thread.
HEADERS_AHEAD_PER_THREAD = 4
DOWNLOAD_CHUNK_BYTES = 1024 * 1024


class S3Error(DicomSendError):
    """An S3 request failed: no credentials, access denied, unreachable endpoint."""


@dataclass(frozen=True, slots=True)
class S3Settings:
    """The S3 endpoint, region and profile; None leaves the choice to boto3."""

    endpoint_url: str | None = None
    region_name: str | None = None
    profile_name: str | None = None


@dataclass(frozen=True, slots=True)
class S3Source(Source):
    """A DICOM object in S3. ``path`` and ``data`` are both None.

    ``name`` is the ``s3://bucket/key`` URL that events and reports show.
    ``etag`` is the entity tag when the header was read; fetching a changed
    object fails instead of sending another object than the one planned.
    """

    bucket: str = ""
    key: str = ""
    etag: str | None = None
    settings: S3Settings = field(default_factory=S3Settings)


def is_s3_url(path: object) -> bool:
    """Return True if ``path`` is a string that starts with ``s3://``."""
    return isinstance(path, str) and path[:len(S3_SCHEME)].lower() == S3_SCHEME


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into the bucket and the key (maybe empty).

    Raises
    ------
    ValueError
        If the URL has no bucket name.
    """
    if not is_s3_url(url):
        raise ValueError(f"Invalid S3 URL {url!r}: expected s3://bucket/key")
    bucket, _, key = url[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"Invalid S3 URL {url!r}: the bucket name is missing")
    return bucket, key


@lru_cache(maxsize=8)
def s3_client(settings: S3Settings) -> Any:
    """Return a boto3 S3 client for ``settings``, one per settings value.

    boto3 clients are thread-safe, so the header threads and the feeder
    thread share it.

    Raises
    ------
    S3Error
        If boto3 is not installed or the profile does not exist.
    """
    try:
        import boto3  # type: ignore[import-untyped]
        import botocore.config  # type: ignore[import-untyped]
        import botocore.exceptions  # type: ignore[import-untyped]
    except ImportError as exc:
        raise S3Error(
            "Unable to read s3:// sources as boto3 is not installed; install "
            "dicomsend with the s3 extra (pip install 'dicomsend[s3]')"
        ) from exc

    try:
        session = boto3.session.Session(profile_name=settings.profile_name,
                                        region_name=settings.region_name)
    except botocore.exceptions.ProfileNotFound as exc:
        raise S3Error(f"Unable to read s3:// sources: {exc}") from exc
    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5},
                                    max_pool_connections=HEADER_THREADS + 2)
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


# Adding sources


def s3_source(url: str, settings: S3Settings | None = None) -> S3Source | SkippedFile:
    """Read the header of one object named by the caller.

    A DICOMDIR is skipped. An object that is not DICOM gives a source with
    the error, which fails when sent, as a local file named by the caller.

    Raises
    ------
    ValueError
        If ``url`` is not an ``s3://bucket/key`` URL with a key.
    FileNotFoundError
        If the bucket or the object does not exist.
    S3Error
        If S3 cannot be reached or refuses the request.
    """
    settings = settings or S3Settings()
    bucket, key = parse_s3_url(url)
    if not key or key.endswith("/"):
        raise ValueError(f"Invalid S3 object {url!r}: the key is missing or names "
                         "a prefix; use add_directory() for a prefix")
    return _read_object(s3_client(settings), bucket, key, None, settings,
                        in_directory=False)


def s3_sources(url: str, settings: S3Settings | None = None,
               ) -> Iterator[S3Source | SkippedFile]:
    """List the objects under an ``s3://bucket/prefix/`` and read their headers.

    Keys come in S3's order (ascending UTF-8), one page of up to 1000 at a
    time. A prefix without a trailing ``/`` gets one, as a folder would.
    Keys ending in ``/`` (folder markers), DICOMDIR objects and objects that
    are not DICOM are skipped; skipped objects come as ``SkippedFile``.

    Raises
    ------
    ValueError
        If ``url`` is not an ``s3://`` URL.
    FileNotFoundError
        If the bucket does not exist or no object is under the prefix.
    S3Error
        If S3 cannot be reached or refuses the listing.
    """
    settings = settings or S3Settings()
    bucket, prefix = parse_s3_url(url)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = s3_client(settings)

    with ThreadPoolExecutor(HEADER_THREADS, thread_name_prefix="dicomsend-s3") as pool:
        pending: deque[Future[S3Source | SkippedFile]] = deque()
        found = 0
        for key, size, etag in _list_objects(client, bucket, prefix):
            found += 1
            pending.append(pool.submit(_read_object, client, bucket, key,
                                       (size, etag), settings, True))
            if len(pending) >= HEADER_THREADS * HEADERS_AHEAD_PER_THREAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    if not found:
        raise FileNotFoundError(
            f"Unable to add '{S3_SCHEME}{bucket}/{prefix}' as no object was found "
            "under that prefix"
        )


def _list_objects(client: Any, bucket: str, prefix: str,
                  ) -> Iterator[tuple[str, int, str | None]]:
    """Yield (key, size, ETag) of each object under ``prefix``, page by page."""
    paginator = client.get_paginator("list_objects_v2")
    url = f"{S3_SCHEME}{bucket}/{prefix}"
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                if entry["Key"].endswith("/"):
                    continue
                yield entry["Key"], int(entry["Size"]), entry.get("ETag")
    except Exception as exc:  # noqa: BLE001 - botocore's errors are mapped below
        raise _mapped_error(exc, url, "list") from exc


def _read_object(
    client: Any,
    bucket: str,
    key: str,
    listed: tuple[int, str | None] | None,
    settings: S3Settings,
    in_directory: bool,
) -> S3Source | SkippedFile:
    """Read one object's header with ranged GETs and build its source."""
    url = f"{S3_SCHEME}{bucket}/{key}"
    if os.path.basename(key).upper() == "DICOMDIR":
        return SkippedFile(url, "DICOMDIR (a media directory, not an object to store)")

    def failed(message: str, size: int = 0) -> S3Source:
        return S3Source(url, None, None, None, size, message, bucket=bucket, key=key,
                        settings=settings)

    try:
        reader = _RangedObject(client, bucket, key, listed)
    except FileNotFoundError:
        if in_directory:
            return failed(f"Unable to read '{url}' as it was deleted after it "
                          "was listed")
        raise
    except S3Error as exc:
        if in_directory:
            return failed(str(exc))
        raise

    try:
        header = read_header(io.BufferedReader(reader, HEADER_RANGE_BYTES), url)
    except FileError as exc:
        if in_directory and isinstance(exc, NotDicomError):
            return SkippedFile(url, str(exc))
        return failed(str(exc), reader.size)
    except (S3Error, FileNotFoundError) as exc:
        return failed(str(exc), reader.size)

    if header.is_dicomdir:
        return SkippedFile(url, "DICOMDIR (a media directory, not an object to store)")
    logger.debug("Read the header of '%s' with %d ranged GET(s)", url, reader.requests)
    return S3Source(url, None, None, header, reader.size, bucket=bucket, key=key,
                    etag=reader.etag, settings=settings)


class _RangedObject(io.RawIOBase):
    """A seekable, read-only view of an S3 object that fetches ranges on demand.

    The first ``HEADER_RANGE_BYTES`` are fetched when it is created, which
    also gives the object's size and ETag. Further reads fetch at least
    ``READ_AHEAD_BYTES`` from the position read.
    """

    def __init__(self, client: Any, bucket: str, key: str,
                 listed: tuple[int, str | None] | None) -> None:
        super().__init__()
        self.client = client
        self.bucket = bucket
        self.key = key
        self.url = f"{S3_SCHEME}{bucket}/{key}"
        # pydicom reads the name of the file-like object it is given.
        self.name = self.url
        self.position = 0
        self.requests = 0
        self.segments: list[tuple[int, bytes]] = []
        # -1 until the first reply gives the size.
        self.size, self.etag = listed if listed is not None else (-1, None)
        if self.size == 0:
            return
        self._fetch(0, HEADER_RANGE_BYTES)

    def _fetch(self, start: int, length: int) -> bytes:
        """GET ``length`` bytes from ``start`` (fewer at the end of the object)."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key,
                                     "Range": f"bytes={start}-{start + length - 1}"}
        if self.etag:
            arguments["IfMatch"] = self.etag
        try:
            reply = self.client.get_object(**arguments)
            data: bytes = reply["Body"].read()
        except Exception as exc:  # noqa: BLE001 - botocore's errors are mapped below
            if _error_code(exc) == "InvalidRange":
                # Only an empty object has no byte 0.
                self.size = 0
                return b""
            raise _mapped_error(exc, self.url, "read") from exc
        self.requests += 1

        content_range = reply.get("ContentRange") or ""
        if "/" in content_range:
            self.size = int(content_range.rsplit("/", 1)[1])
        elif self.size < 0:
            self.size = int(reply.get("ContentLength", len(data)))
        self.etag = self.etag or reply.get("ETag")
        self.segments.append((start, data))
        del self.segments[:-4]
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.position = offset
        elif whence == io.SEEK_CUR:
            self.position += offset
        elif whence == io.SEEK_END:
            self.position = self.size + offset
        else:
            raise ValueError(f"Invalid whence {whence!r}")
        self.position = max(self.position, 0)
        return self.position

    def readinto(self, buffer: Any) -> int:
        wanted = len(buffer)
        if wanted == 0 or self.position >= self.size:
            return 0
        for start, data in self.segments:
            if start <= self.position < start + len(data):
                chunk = data[self.position - start:self.position - start + wanted]
                break
        else:
            data = self._fetch(self.position, max(wanted, READ_AHEAD_BYTES))
            chunk = data[:wanted]
        buffer[:len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


# Fetching objects for the pipeline


def spooled_path(spool_dir: str, job_id: int) -> str:
    """Return where :func:`fetch_to_spool` puts the object of file ``job_id``."""
    return os.path.join(spool_dir, f"{job_id}.s3")


def fetch_to_spool(source: S3Source, spool_dir: str, job_id: int) -> str:
    """Download the whole object of ``source`` into the spool folder.

    Returns the local path. The download fails, rather than fetch another
    object, when the object changed since its header was read (its ETag
    differs) or its size is not the one listed.

    Raises
    ------
    S3Error
        If the download failed; the message names the object and the cause.
    """
    path = spooled_path(spool_dir, job_id)
    client = s3_client(source.settings)
    arguments: dict[str, str] = {"Bucket": source.bucket, "Key": source.key}
    if source.etag:
        arguments["IfMatch"] = source.etag
    try:
        # One streamed GET: boto3's managed download_file would be faster for
        # very large objects, but it cannot make the GET conditional.
        reply = client.get_object(**arguments)
        with open(path, "wb") as spool_file:
            shutil.copyfileobj(reply["Body"], spool_file, DOWNLOAD_CHUNK_BYTES)
    except OSError as exc:
        remove_quietly(path)
        raise S3Error(
            f"Unable to spool '{source.name}' to '{path}': {exc.strerror or exc}; "
            "free disk space in the temporary folder"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - botocore's errors are mapped below
        remove_quietly(path)
        raise _mapped_error(exc, source.name, "fetch") from exc

    size = os.path.getsize(path)
    if size != source.size:
        remove_quietly(path)
        raise S3Error(
            f"Unable to send '{source.name}' as it changed after it was added "
            f"({size} bytes now, {source.size} when listed); add it again"
        )
    logger.debug("Fetched '%s' (%d bytes) to '%s'", source.name, size, path)
    return path


def remove_spooled(spool_dir: str, job_id: int) -> None:
    """Delete the fetched copy of file ``job_id``, if it is still there."""
    remove_quietly(spooled_path(spool_dir, job_id))


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# Errors

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _mapped_error(exc: BaseException, url: str, action: str) -> Exception:
    """Turn a botocore error into FileNotFoundError or S3Error naming ``url``."""
    code = _error_code(exc)
    verb = {"list": "list", "read": "read", "fetch": "download"}[action]
    if code == "NoSuchBucket":
        return FileNotFoundError(f"Unable to {verb} '{url}' as the bucket does not "
                                 "exist")
    if code in _NOT_FOUND_CODES:
        return FileNotFoundError(f"Unable to {verb} '{url}' as the object does not "
                                 "exist")
    if code in ("PreconditionFailed", "412"):
        return S3Error(f"Unable to send '{url}' as it changed after it was added "
                       "(its ETag differs); add it again")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId",
                "SignatureDoesNotMatch"):
        return S3Error(f"Unable to {verb} '{url}': access denied ({code}); check "
                       "the credentials and the bucket policy")
    detail = f"{type(exc).__name__}: {exc}"
    hint = ("; set the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) or the "
            "endpoint (--s3-endpoint, AWS_ENDPOINT_URL_S3)")
    return S3Error(f"Unable to {verb} '{url}': {detail}{hint}")
