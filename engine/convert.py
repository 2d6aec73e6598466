"""``dicomsend convert``: re-encode files into a folder instead of sending them.

The inputs are found and checked as for ``send`` (the same header reading
and skip rules), and each file is re-encoded by the same ``Transcoder`` the
send workers use, in a pool of worker processes. The output mirrors the
input tree below ``out_dir``. Nothing is ever overwritten: an output that
exists already fails that file, and an output that would be one of the
inputs is refused.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from engine.sources import SkippedFile, Source, source_from_path, sources_from_directory

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConvertJob:
    source: str
    output: str
    target_syntax: str
    allow_lossy: bool
    verify: bool


@dataclass(frozen=True, slots=True)
class ConvertOutcome:
    source: str
    output: str
    error: str | None


@dataclass(frozen=True, slots=True)
class ConvertResult:
    converted: int
    failed: int
    skipped: int
    failures: tuple[ConvertOutcome, ...]


def plan_outputs(
    paths: Sequence[str], out_dir: str
) -> Iterator[tuple[Source | SkippedFile, str]]:
    """Yield each input with its output path, mirroring the tree below ``out_dir``."""
    for given in paths:
        if os.path.isdir(given):
            root = os.path.abspath(given)
            for found in sources_from_directory(given):
                name = found.path if isinstance(found, SkippedFile) else found.name
                relative = os.path.relpath(os.path.abspath(name), root)
                yield found, os.path.join(out_dir, os.path.basename(root), relative)
        else:
            yield source_from_path(given), os.path.join(out_dir,
                                                       os.path.basename(given))


def convert_files(
    paths: Sequence[str],
    out_dir: str,
    target_syntax: str,
    *,
    workers: int,
    allow_lossy: bool = False,
    verify: bool = False,
    start_method: str | None = None,
) -> ConvertResult:
    """Re-encode every DICOM file in ``paths`` into ``out_dir``."""
    from transcode.syntaxes import resolve_transfer_syntax

    target = str(resolve_transfer_syntax(target_syntax))
    jobs: list[ConvertJob] = []
    failures: list[ConvertOutcome] = []
    skipped = 0
    inputs = set()

    planned = list(plan_outputs(paths, out_dir))
    for found, _ in planned:
        if isinstance(found, Source) and found.path:
            inputs.add(os.path.realpath(found.path))

    for found, output in planned:
        if isinstance(found, SkippedFile):
            skipped += 1
            continue
        if found.error is not None or found.path is None:
            failures.append(ConvertOutcome(found.name, output, found.error))
            continue
        if os.path.realpath(output) in inputs:
            failures.append(ConvertOutcome(
                found.name, output,
                f"Unable to convert '{found.name}' as its output '{output}' would "
                "overwrite an input; choose another --out folder",
            ))
            continue
        jobs.append(ConvertJob(found.path, output, target, allow_lossy, verify))

    context = multiprocessing.get_context(start_method)
    converted = 0
    debugging = logging.getLogger("engine").isEnabledFor(logging.DEBUG)
    with context.Pool(processes=workers, initializer=_quiet_libraries,
                      initargs=(debugging,)) as pool:
        for outcome in pool.imap_unordered(convert_one, jobs, chunksize=1):
            if outcome.error is None:
                converted += 1
                logger.info("Converted '%s' to '%s'", outcome.source, outcome.output)
            else:
                logger.error("%s", outcome.error)
                failures.append(outcome)

    return ConvertResult(converted, len(failures), skipped, tuple(failures))


def _quiet_libraries(debugging: bool) -> None:
    """Silence codec libraries in a pool process; each failure is reported once."""
    if debugging:
        return
    import warnings

    warnings.simplefilter("ignore")
    for name in ("pydicom", "openjpeg", "libjpeg", "PIL"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.setLevel(logging.CRITICAL)
        library.propagate = False


def convert_one(job: ConvertJob) -> ConvertOutcome:
    """Re-encode one file; runs in a pool process."""
    import pydicom

    from transcode.errors import TranscodeError
    from transcode.transcoder import Transcoder

    try:
        dataset = pydicom.dcmread(job.source, force=True)
        transcoder = Transcoder(job.target_syntax, allow_lossy=job.allow_lossy,
                                verify=job.verify)
        result = transcoder.transcode(dataset)
    except TranscodeError as exc:
        return ConvertOutcome(job.source, job.output,
                              f"Unable to convert '{job.source}': {exc}")
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        return ConvertOutcome(
            job.source, job.output,
            f"Unable to convert '{job.source}': {type(exc).__name__}: {exc}",
        )

    try:
        os.makedirs(os.path.dirname(job.output) or ".", exist_ok=True)
        output = open(job.output, "xb")
    except FileExistsError:
        return ConvertOutcome(
            job.source, job.output,
            f"Unable to convert '{job.source}' as '{job.output}' exists already; "
            "nothing was overwritten, choose another --out folder",
        )
    except OSError as exc:
        return ConvertOutcome(
            job.source, job.output,
            f"Unable to write '{job.output}': {exc.strerror or exc}",
        )

    try:
        with output:
            result.dataset.save_as(output, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - remove the partial file we created
        os.remove(job.output)
        return ConvertOutcome(
            job.source, job.output,
            f"Unable to write '{job.output}': {type(exc).__name__}: {exc}",
        )
    return ConvertOutcome(job.source, job.output, None)
