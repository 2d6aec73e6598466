"""DCMTK as an independent decoder of what transcode writes.

DCMTK 3.6.7 decodes JPEG (dcmdjpeg), RLE (dcmdrle) and JPEG-LS (dcmdjpls).
It has no JPEG 2000 or HTJ2K decoder, so for those dcmdump has to parse the
file and list one pixel item per frame after the Basic Offset Table.
Under CI=true a missing DCMTK fails these tests instead of skipping them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from transcode_helpers import CORPUS, PYDICOM_FILES, read_source, reference_pixels

from transcode.errors import UnsupportedTransferSyntaxError
from transcode.transcoder import Transcoder

pytestmark = pytest.mark.dcmtk

SOURCES = {
    "ct-signed-16": CORPUS / "wg04" / "WG04_CT1_UNC.dcm",
    "us-rgb-8": CORPUS / "wg04" / "WG04_US1_UNC.dcm",
    "mr-12-of-16": CORPUS / "dcm_qa_ts" / "dcmqats_1.dcm",
    "us-ybr-30-frames": PYDICOM_FILES / "examples_ybr_color.dcm",
}
DECODERS = {
    "RLELossless": "dcmdrle",
    "JPEGLossless": "dcmdjpeg",
    "JPEGLosslessSV1": "dcmdjpeg",
    "JPEGLSLossless": "dcmdjpls",
    "JPEGBaseline8Bit": "dcmdjpeg",
    "JPEGExtended12Bit": "dcmdjpeg",
    "JPEGLSNearLossless": "dcmdjpls",
}
LOSSY_PSNR_FLOOR = {"JPEGBaseline8Bit": 30.0, "JPEGExtended12Bit": 50.0,
                    "JPEGLSNearLossless": 45.0}
PARSED_ONLY = ["JPEG2000Lossless", "JPEG2000", "HTJ2KLossless", "HTJ2KLosslessRPCL",
               "HTJ2K"]


# JPEG Baseline takes 8 bits, JPEG Extended monochrome unsigned data only.
NOT_REPRESENTABLE = {
    ("ct-signed-16", "JPEGBaseline8Bit"),
    ("ct-signed-16", "JPEGExtended12Bit"),
    ("mr-12-of-16", "JPEGBaseline8Bit"),
    ("us-rgb-8", "JPEGExtended12Bit"),
    ("us-ybr-30-frames", "JPEGExtended12Bit"),
}
DECODE_CASES = [
    (source, target)
    for source in SOURCES
    for target in DECODERS
    if (source, target) not in NOT_REPRESENTABLE
]


def _write(source: str, target: str, folder: Path) -> Path:
    """Write `source` transcoded to `target` as a DICOM file."""
    transcoder = Transcoder(target, allow_lossy=True)
    result = transcoder.transcode(read_source(SOURCES[source]))
    path = folder / f"{source}-{target}.dcm"
    result.dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("source", "target"), DECODE_CASES)
def test_dcmtk_decodes(source: str, target: str, tmp_path: Path,
                       dcmtk_tools: dict[str, str]) -> None:
    """DCMTK decodes the output to the source pixels (within a PSNR floor if lossy)."""
    written = _write(source, target, tmp_path)
    decoded_path = tmp_path / "decoded.dcm"

    command = [dcmtk_tools[DECODERS[target]], str(written), str(decoded_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120,
                         check=False)

    assert run.returncode == 0, run.stderr
    decoded = pydicom.dcmread(decoded_path)
    expected = reference_pixels(SOURCES[source])
    pixels = decoded.pixel_array.reshape(expected.shape)
    if target not in LOSSY_PSNR_FLOOR:
        assert np.array_equal(pixels, expected)
        return
    error = pixels.astype(np.float64) - expected.astype(np.float64)
    peak = (1 << int(decoded.BitsStored)) - 1
    psnr = 10 * np.log10(peak**2 / max(float(np.mean(error**2)), 1e-12))
    assert psnr > LOSSY_PSNR_FLOOR[target]


@pytest.mark.parametrize("target", PARSED_ONLY)
@pytest.mark.parametrize("source", ["ct-signed-16", "us-ybr-30-frames"])
def test_dcmtk_parses_jpeg_2000(source: str, target: str, tmp_path: Path,
                                dcmtk_tools: dict[str, str]) -> None:
    """dcmdump reads J2K and HTJ2K output: a BOT plus one item per frame."""
    written = _write(source, target, tmp_path)

    run = subprocess.run([dcmtk_tools["dcmdump"], "-q", str(written)],
                         capture_output=True, text=True, timeout=120, check=False)

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    frames = int(read_source(SOURCES[source]).get("NumberOfFrames") or 1)
    items = re.findall(r"^\s*\(fffe,e000\) pi ", run.stdout, flags=re.MULTILINE)
    assert len(items) == frames + 1
    codestreams = re.findall(r"\(fffe,e000\) pi ff\\4f\\ff\\51", run.stdout)
    assert len(codestreams) == frames


@pytest.mark.parametrize(("source", "target"), sorted(NOT_REPRESENTABLE))
def test_unrepresentable_pairs_are_rejected(source: str, target: str) -> None:
    """The pairs left out above are exactly the ones transcode rejects."""
    transcoder = Transcoder(target, allow_lossy=True)
    with pytest.raises(UnsupportedTransferSyntaxError, match="cannot represent"):
        transcoder.transcode(read_source(SOURCES[source]))
