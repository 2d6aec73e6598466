"""Throughput of the transcoder for each target syntax.

Run from the project root::

    python -m perf.transcode_bench [--files 48] [--targets RLELossless,...]

It generates CT-like files (512 x 512, 12 bits stored in 16, unsigned, one
frame: a noisy ellipse of soft tissue with brighter bone inside it on an air
background) in a temporary folder, then times for each target:

* ``Transcoder`` in a ``multiprocessing.Pool`` of 1 and of 2 workers, each
  job reading one file, transcoding it and producing the wire bytes;
* the codec alone (``transcode.codecs.frame_encoder``) on arrays already in
  memory, in one process;
* DCMTK's ``dcmcrle``, ``dcmcjpeg`` or ``dcmcjpls`` where the target has one
  and the tool is installed, one process per file, 1 and 2 at a time.

Files/s counts files finished per second of wall time. MB/s is uncompressed
pixel data (0.5 MiB a file) per second. The results go to
``perf/results/transcode_bench.md`` and ``perf/results/transcode_bench.png``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from transcode.codecs import CodecOptions, check_encodable, frame_encoder
from transcode.errors import UnsupportedTransferSyntaxError
from transcode.pixels import describe_pixels
from transcode.syntaxes import get_syntax_info, resolve_transfer_syntax
from transcode.transcoder import Transcoder

logger = logging.getLogger(__name__)

ROWS = COLUMNS = 512
MEBIBYTE = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results"

TARGETS = [
    "ExplicitVRLittleEndian",
    "DeflatedExplicitVRLittleEndian",
    "RLELossless",
    "JPEGLSLossless",
    "JPEGLSNearLossless",
    "JPEG2000Lossless",
    "JPEG2000",
    "JPEGLossless",
    "JPEGLosslessSV1",
    "JPEGBaseline8Bit",
    "JPEGExtended12Bit",
    "HTJ2KLossless",
    "HTJ2KLosslessRPCL",
    "HTJ2K",
]

# DCMTK 3.6.7 command lines that produce each target from a native file.
DCMTK_COMMANDS: dict[str, list[str]] = {
    "RLELossless": ["/usr/bin/dcmcrle"],
    "JPEGLSLossless": ["/usr/bin/dcmcjpls", "+el"],
    "JPEGLSNearLossless": ["/usr/bin/dcmcjpls", "+en"],
    "JPEGLossless": ["/usr/bin/dcmcjpeg", "+el", "+sv", "1"],
    "JPEGLosslessSV1": ["/usr/bin/dcmcjpeg", "+e1"],
    "JPEGExtended12Bit": ["/usr/bin/dcmcjpeg", "+ee", "+q", "90"],
}


@dataclass(frozen=True, slots=True)
class Measurement:
    """One timed run: `files` files in `seconds` of wall time."""

    target: str
    mode: str
    files: int
    seconds: float

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds

    @property
    def mebibytes_per_second(self) -> float:
        return self.files * ROWS * COLUMNS * 2 / MEBIBYTE / self.seconds


def make_ct_like(seed: int) -> Dataset:
    """Return a synthetic CT-like slice: 12 bits stored in 16, unsigned."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    body = ((x - 256) / 200) ** 2 + ((y - 256) / 160) ** 2 <= 1
    bone = ((x - 256 - 40 * np.sin(seed)) / 40) ** 2 + ((y - 300) / 30) ** 2 <= 1
    image = np.where(body, 1040.0, 24.0)
    image = np.where(bone, 1900.0, image)
    image += rng.normal(0, 12, image.shape) * body
    pixels = np.clip(image, 0, 4095).astype("<u2")

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Bench^Phantom"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.tobytes()
    return ds


def write_inputs(folder: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = folder / f"ct_{index:03d}.dcm"
        make_ct_like(index).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_worker_transcoder: Transcoder | None = None


def _init_worker(target: str) -> None:
    global _worker_transcoder
    _worker_transcoder = Transcoder(target, allow_lossy=True)


def _transcode_file(path: Path) -> int:
    assert _worker_transcoder is not None
    result = _worker_transcoder.transcode(pydicom.dcmread(path))
    return len(result.dataset_bytes())


def time_transcoder(target: str, paths: Sequence[Path], workers: int) -> float:
    """Return the wall time of transcoding `paths` in a Pool of `workers`."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(target,)) as pool:
        pool.apply(_init_worker, (target,))  # wait until the workers are up
        start = time.perf_counter()
        pool.map(_transcode_file, paths, chunksize=1)
        return time.perf_counter() - start


def time_codec(target: str, paths: Sequence[Path]) -> float | None:
    """Return the wall time of the frame encoder alone, or None for native targets."""
    uid = resolve_transfer_syntax(target)
    if not get_syntax_info(uid).encapsulated:
        return None
    datasets = [pydicom.dcmread(path) for path in paths]
    module = describe_pixels(datasets[0])
    assert module is not None
    encode: Callable[[np.ndarray], bytes] = frame_encoder(uid, module, CodecOptions())
    frames = [ds.pixel_array for ds in datasets]

    start = time.perf_counter()
    for frame in frames:
        encode(frame)
    return time.perf_counter() - start


def _run_dcmtk(command: list[str], source: Path, destination: Path) -> None:
    subprocess.run([*command, str(source), str(destination)], check=True,
                   capture_output=True, timeout=120)


def time_dcmtk(target: str, paths: Sequence[Path], workers: int,
               folder: Path) -> float | None:
    """Return the wall time of DCMTK's compressor, or None if it is not there."""
    command = DCMTK_COMMANDS.get(target)
    if command is None or shutil.which(command[0]) is None:
        return None
    jobs = [(command, path, folder / f"dcmtk_{path.name}") for path in paths]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_run_dcmtk, jobs, chunksize=1)
    return time.perf_counter() - start


def run(targets: Sequence[str], count: int) -> list[Measurement]:
    measurements = []
    with tempfile.TemporaryDirectory(prefix="transcode_bench_") as tmp:
        folder = Path(tmp)
        paths = write_inputs(folder, count)
        module = describe_pixels(pydicom.dcmread(paths[0]))
        assert module is not None
        for target in targets:
            try:
                check_encodable(resolve_transfer_syntax(target), module)
            except UnsupportedTransferSyntaxError as exc:
                logger.warning("%s skipped: %s", target, exc)
                continue
            timings: dict[str, float | None] = {
                "transcoder, 1 process": time_transcoder(target, paths, 1),
                "transcoder, 2 processes": time_transcoder(target, paths, 2),
                "codec only, 1 process": time_codec(target, paths),
                "DCMTK, 1 process": time_dcmtk(target, paths, 1, folder),
                "DCMTK, 2 processes": time_dcmtk(target, paths, 2, folder),
            }
            for mode, seconds in timings.items():
                if seconds is not None:
                    measurements.append(Measurement(target, mode, count, seconds))
            logger.info("%s done", target)
    return measurements


def write_markdown(measurements: Sequence[Measurement], count: int, path: Path) -> None:
    modes = list(dict.fromkeys(m.mode for m in measurements))
    targets = list(dict.fromkeys(m.target for m in measurements))
    by_key = {(m.target, m.mode): m for m in measurements}
    lines = [
        "# Transcoder throughput",
        "",
        (
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by "
            "`python -m perf.transcode_bench` on "
            f"{platform.machine()} with {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, pydicom {pydicom.__version__}."
        ),
        (
            f"Input: {count} generated CT-like files, 512 x 512, 12 bits stored "
            "in 16. Each cell is files/s and MiB/s of uncompressed pixel data. "
            "Empty cells have no such tool. Pool start-up is not timed. "
            "Each number comes from one run, and other processes may have "
            "shared the machine, so rerun before comparing close values."
        ),
        "",
        "| target | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for target in targets:
        cells = []
        for mode in modes:
            m = by_key.get((target, mode))
            if m is None:
                cells.append("")
                continue
            cells.append(
                f"{m.files_per_second:.1f} files/s, "
                f"{m.mebibytes_per_second:.1f} MiB/s"
            )
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(measurements: Sequence[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(m.mode for m in measurements))
    targets = list(dict.fromkeys(m.target for m in measurements))
    by_key = {(m.target, m.mode): m.files_per_second for m in measurements}
    width = 0.8 / len(modes)
    figure, axes = plt.subplots(figsize=(12, 5.5))
    for index, mode in enumerate(modes):
        positions = [t + index * width for t in range(len(targets))]
        values = [by_key.get((target, mode), 0.0) for target in targets]
        axes.bar(positions, values, width, label=mode)
    axes.set_xticks([t + 0.4 - width / 2 for t in range(len(targets))])
    axes.set_xticklabels(targets, rotation=35, ha="right")
    axes.set_ylabel("files per second (512 x 512, 16-bit)")
    axes.set_yscale("log")
    axes.set_title("Transcoding throughput by target transfer syntax")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=48,
                        help="number of generated files per run (default 48)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated target names (default: all)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS,
                        help="folder for the markdown table and the plot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    measurements = run(targets, args.files)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_markdown(measurements, args.files, args.output_dir / "transcode_bench.md")
    write_plot(measurements, args.output_dir / "transcode_bench.png")
    logger.info("wrote %s", args.output_dir / "transcode_bench.md")


if __name__ == "__main__":
    main()
