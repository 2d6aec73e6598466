"""Lossy targets: the guard, image quality, and the attributes of lossy output."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.encaps import generate_frames
from transcode_helpers import CORPUS, read_source, reference_pixels

from transcode.codecs import CodecOptions
from transcode.errors import LossyNotAllowedError
from transcode.transcoder import Transcoder
from transcode.verify import decode_dataset

LOSSY_TARGETS = [
    "JPEGBaseline8Bit",
    "JPEGExtended12Bit",
    "JPEGLSNearLossless",
    "JPEG2000",
    "HTJ2K",
]
MR_12_BIT = CORPUS / "dcm_qa_ts" / "dcmqats_1.dcm"  # 384 x 384, 12 of 16 bits
US_RGB_8_BIT = CORPUS / "wg04" / "WG04_US1_UNC.dcm"  # 480 x 640 RGB
DX_8_BIT = CORPUS / "highdicom" / "highdicom_dx_image.dcm"  # MONOCHROME1

# PSNR floors in dB with the default CodecOptions, about 5 dB under what
# the encoders reached on these files.
CASES = [
    ("JPEGBaseline8Bit", US_RGB_8_BIT, 30.0),
    ("JPEGBaseline8Bit", DX_8_BIT, 36.0),
    ("JPEGExtended12Bit", DX_8_BIT, 36.0),
    ("JPEGExtended12Bit", MR_12_BIT, 55.0),
    ("JPEGLSNearLossless", US_RGB_8_BIT, 40.0),
    ("JPEGLSNearLossless", MR_12_BIT, 60.0),
    ("JPEG2000", US_RGB_8_BIT, 31.0),
    ("JPEG2000", MR_12_BIT, 39.0),
    ("HTJ2K", DX_8_BIT, 47.0),
    ("HTJ2K", MR_12_BIT, 49.0),
]
METHODS = {
    "JPEGBaseline8Bit": "ISO_10918_1",
    "JPEGExtended12Bit": "ISO_10918_1",
    "JPEGLSNearLossless": "ISO_14495_1",
    "JPEG2000": "ISO_15444_1",
    "HTJ2K": "ISO_15444_15",
}


def psnr(decoded: np.ndarray, reference: np.ndarray, bits: int) -> float:
    error = decoded.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(error**2))
    peak = float((1 << bits) - 1)
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.mark.parametrize("target", LOSSY_TARGETS)
def test_lossy_needs_opt_in(target: str) -> None:
    """A lossy target without allow_lossy raises before anything is encoded."""
    with pytest.raises(LossyNotAllowedError, match=r"is lossy and lossy compression "
                                                   r"is not allowed"):
        Transcoder(target).transcode(read_source(MR_12_BIT))


@pytest.mark.parametrize(("target", "path", "floor"), CASES,
                         ids=[f"{t}-{p.stem}" for t, p, _ in CASES])
def test_lossy_quality_and_tags(target: str, path: object, floor: float) -> None:
    """Lossy output stays above its PSNR floor and carries the three lossy tags."""
    ds = read_source(path)

    result = Transcoder(target, allow_lossy=True, verify=True).transcode(ds)

    out = result.dataset
    bits = int(out.BitsStored) if target.startswith("JPEG") and "LS" not in target \
        else int(ds.BitsStored)
    decoded = decode_dataset(out, result.transfer_syntax, raw=False)
    assert psnr(decoded, reference_pixels(path), bits) > floor
    assert result.lossy
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == METHODS[target]
    assert float(out.LossyImageCompressionRatio) == pytest.approx(
        result.compression_ratio, abs=0.01
    )
    assert result.compression_ratio > 1.5
    assert out.SOPInstanceUID != ds.SOPInstanceUID
    assert result.sop_instance_uid == out.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_lossy_keep_uid_option() -> None:
    """keep_sop_instance_uid keeps the original UID on lossy output."""
    ds = read_source(MR_12_BIT)

    result = Transcoder("JPEG2000", allow_lossy=True,
                        keep_sop_instance_uid=True).transcode(ds)

    assert result.sop_instance_uid == ds.SOPInstanceUID
    assert result.dataset.SOPInstanceUID == ds.SOPInstanceUID


def test_lossy_appends_to_earlier_compression() -> None:
    """Re-compressing lossy data appends a second ratio and method."""
    ds = read_source(
        CORPUS / "pylibjpeg-data" / "ljdata_JPEGBaseline_1s_1f_u_08_08.dcm"
    )
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"

    result = Transcoder("JPEGLSNearLossless", allow_lossy=True).transcode(ds)

    out = result.dataset
    assert out.LossyImageCompression == "01"
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_14495_1"]
    ratios = list(out.LossyImageCompressionRatio)
    assert len(ratios) == 2
    assert float(ratios[0]) == pytest.approx(17.401)
    assert float(ratios[1]) == pytest.approx(result.compression_ratio, abs=0.01)


def test_jpeg_baseline_colour_is_ybr_full_422() -> None:
    """JPEG Baseline colour output is labelled YBR_FULL_422 and coded as SOF0 4:2:2."""
    ds = read_source(US_RGB_8_BIT)

    result = Transcoder("JPEGBaseline", allow_lossy=True).transcode(ds)

    out = result.dataset
    assert out.PhotometricInterpretation == "YBR_FULL_422"
    assert out.PlanarConfiguration == 0
    assert (out.BitsAllocated, out.BitsStored, out.HighBit) == (8, 8, 7)
    frame = next(generate_frames(out.PixelData, number_of_frames=1))
    sof = frame.find(b"\xff\xc0")
    assert sof > 0
    # Component 1 samples 2 x 1, components 2 and 3 1 x 1 (4:2:2).
    assert frame[sof + 11] == 0x21
    assert frame[sof + 14] == 0x11


def test_jpeg_extended_12_bit_stream() -> None:
    """JPEG Extended writes a 12-bit SOF1 stream with Bits Stored 12."""
    transcoder = Transcoder("JPEGExtended", allow_lossy=True)
    result = transcoder.transcode(read_source(MR_12_BIT))

    out = result.dataset
    assert (out.BitsAllocated, out.BitsStored, out.HighBit) == (16, 12, 11)
    frame = next(generate_frames(out.PixelData, number_of_frames=1))
    sof = frame.find(b"\xff\xc1")
    assert sof > 0
    assert frame[sof + 4] == 12


def test_quality_option_changes_size() -> None:
    """A lower JPEG quality gives a higher compression ratio."""
    ds = read_source(DX_8_BIT)
    high = Transcoder("JPEGBaseline", allow_lossy=True,
                      options=CodecOptions(jpeg_quality=95)).transcode(ds)
    low = Transcoder("JPEGBaseline", allow_lossy=True,
                     options=CodecOptions(jpeg_quality=40)).transcode(ds)

    assert low.compression_ratio > high.compression_ratio


def test_near_lossless_error_bound() -> None:
    """JPEG-LS near-lossless keeps every sample within NEAR of the source."""
    ds = read_source(MR_12_BIT)
    options = CodecOptions(jpegls_max_error=3)

    result = Transcoder("JPEGLSNearLossless", allow_lossy=True,
                        options=options).transcode(ds)

    decoded = decode_dataset(result.dataset, result.transfer_syntax)
    error = np.abs(decoded.astype(int) - reference_pixels(MR_12_BIT).astype(int))
    assert error.max() <= 3


@pytest.mark.parametrize("field", ["jpeg_quality", "jpegls_max_error",
                                   "j2k_compression_ratio", "jpeg_lossless_predictor"])
def test_codec_options_rejects_out_of_range(field: str) -> None:
    """Each option outside its range raises ValueError naming the option."""
    with pytest.raises(ValueError, match=field):
        CodecOptions(**{field: 0})
