"""Inputs built here for the cases that break transcoders."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragmented_frames, parse_basic_offsets
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import transcode.codecs
from transcode.errors import TranscodeError, UnsupportedTransferSyntaxError
from transcode.transcoder import Transcoder
from transcode.verify import decode_dataset

ENCAPSULATED_LOSSLESS = [
    "RLELossless",
    "JPEGLSLossless",
    "JPEG2000Lossless",
    "JPEGLossless",
    "JPEGLosslessSV1",
    "HTJ2KLossless",
    "HTJ2KLosslessRPCL",
]


def make_dataset(pixel_bytes: bytes, *, rows: int, columns: int, samples: int = 1,
                 allocated: int = 16, stored: int = 16, signed: bool = False,
                 photometric: str = "MONOCHROME2", planar: int = 0, frames: int = 1,
                 transfer_syntax: UID = ExplicitVRLittleEndian) -> Dataset:
    """Return a Secondary Capture data set around `pixel_bytes`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Trap^Case"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixel_bytes
    if transfer_syntax != ExplicitVRLittleEndian:
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    return ds


def signed_12_bit() -> np.ndarray:
    """Signed 12-bit values where the extremes sit next to each other."""
    array = np.zeros((32, 48), dtype=np.int16)
    array[::2, ::2] = -2048
    array[1::2, 1::2] = 2047
    array[::2, 1::2] = -1
    array[1::2, ::2] = 0
    array[10:20, :] = np.arange(-2048, 2048, 4096 // 48)[:48]
    return array


@pytest.mark.parametrize("target", ENCAPSULATED_LOSSLESS)
def test_signed_12_bit_extremes(target: str) -> None:
    """Signed 12-bit data with -2048 beside 2047 stays signed and exact."""
    array = signed_12_bit()
    ds = make_dataset(array.tobytes(), rows=32, columns=48, stored=12, signed=True)

    result = Transcoder(target, verify=True).transcode(ds)

    out = result.dataset
    assert out.PixelRepresentation == 1
    assert out.BitsStored == 12
    assert out.HighBit == 11
    decoded = decode_dataset(out, result.transfer_syntax)[0, ..., 0]
    assert decoded.dtype.kind == "i"
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize("stored", [8, 12])
@pytest.mark.parametrize("target", ENCAPSULATED_LOSSLESS + ["ImplicitVRLittleEndian"])
def test_junk_high_bits(target: str, stored: int) -> None:
    """Bits above Bits Stored are ignored when decoding and never reach the output."""
    rng = np.random.default_rng(stored)
    values = rng.integers(0, 1 << stored, (24, 40), dtype=np.uint16)
    junk = rng.integers(0, 1 << (16 - stored), (24, 40), dtype=np.uint16) << stored
    ds = make_dataset((values | junk).astype("<u2").tobytes(), rows=24, columns=40,
                      stored=stored)

    result = Transcoder(target, verify=True).transcode(ds)

    decoded = decode_dataset(result.dataset, result.transfer_syntax)[0, ..., 0]
    assert np.array_equal(decoded, values)
    assert result.dataset.BitsStored == stored
    # JPEG Lossless moves 8-bit data into an 8-bit container.
    narrowed = stored == 8 and target.startswith("JPEGLossless")
    assert result.dataset.BitsAllocated == (8 if narrowed else 16)


@pytest.mark.parametrize("planar", [0, 1])
@pytest.mark.parametrize("target", ENCAPSULATED_LOSSLESS)
def test_rgb_planar_configuration(target: str, planar: int) -> None:
    """RGB by pixel and by plane decode to the same pixels, written by pixel."""
    rng = np.random.default_rng(planar)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    stored = rgb.transpose(2, 0, 1) if planar else rgb
    ds = make_dataset(stored.tobytes(), rows=20, columns=30, samples=3, allocated=8,
                      stored=8, photometric="RGB", planar=planar)

    result = Transcoder(target, verify=True).transcode(ds)

    out = result.dataset
    assert out.PlanarConfiguration == 0
    assert out.PhotometricInterpretation == "RGB"
    assert np.array_equal(decode_dataset(out, result.transfer_syntax)[0], rgb)


def test_planar_native_passthrough_keeps_bytes() -> None:
    """Native to native keeps colour-by-plane bytes and Planar Configuration 1."""
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(3, 4, 6)
    ds = make_dataset(rgb.tobytes(), rows=4, columns=6, samples=3, allocated=8,
                      stored=8, photometric="RGB", planar=1)

    result = Transcoder("ImplicitVRLittleEndian").transcode(ds)

    assert result.dataset.PlanarConfiguration == 1
    assert result.dataset.PixelData == ds.PixelData


@pytest.mark.parametrize("target", ["RLELossless", "JPEGLSLossless",
                                    "JPEG2000Lossless", "HTJ2KLossless"])
def test_native_ybr_full_422(target: str) -> None:
    """Native YBR_FULL_422 is upsampled and labelled YBR_FULL, values unchanged."""
    rng = np.random.default_rng(7)
    rows, columns = 8, 10
    luma = rng.integers(0, 256, (rows, columns), dtype=np.uint8)
    blue = rng.integers(0, 256, (rows, columns // 2), dtype=np.uint8)
    red = rng.integers(0, 256, (rows, columns // 2), dtype=np.uint8)
    # Each pair of pixels is stored as Y Y Cb Cr (PS3.3 C.7.6.3.1.2).
    packed = np.stack([luma[:, 0::2], luma[:, 1::2], blue, red], axis=-1)
    ds = make_dataset(packed.tobytes(), rows=rows, columns=columns, samples=3,
                      allocated=8, stored=8, photometric="YBR_FULL_422")

    result = Transcoder(target, verify=True).transcode(ds)

    expected = np.stack(
        [luma, np.repeat(blue, 2, axis=1), np.repeat(red, 2, axis=1)], axis=-1
    )
    assert result.dataset.PhotometricInterpretation == "YBR_FULL"
    assert result.dataset.PlanarConfiguration == 0
    decoded = decode_dataset(result.dataset, result.transfer_syntax)[0]
    assert np.array_equal(decoded, expected)


def _fragmented_source(frames: np.ndarray, syntax: UID) -> Dataset:
    """Return `frames` encoded in `syntax` with each frame split over 3 fragments."""
    if syntax == JPEG2000Lossless:
        encoder = get_encoder(JPEG2000Lossless)
        codestreams = [
            encoder.encode(frame, rows=frame.shape[0], columns=frame.shape[1],
                           samples_per_pixel=1, bits_allocated=16, bits_stored=16,
                           pixel_representation=0,
                           photometric_interpretation="MONOCHROME2",
                           number_of_frames=1)
            for frame in frames
        ]
    else:
        codestreams = [
            imagecodecs.htj2k_encode(frame, reversible=True) for frame in frames
        ]
    pixel_data = encapsulate(codestreams, fragments_per_frame=3, has_bot=False)
    count, rows, columns = frames.shape
    return make_dataset(pixel_data, rows=rows, columns=columns, frames=count,
                        transfer_syntax=syntax)


@pytest.mark.parametrize("target", ENCAPSULATED_LOSSLESS)
def test_fragmented_multi_frame(target: str) -> None:
    """Fragmented frames come out as one even fragment per frame plus a BOT."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 65536, (3, 33, 35), dtype=np.uint16)
    source_syntax = HTJ2KLossless if target == "JPEG2000Lossless" else JPEG2000Lossless
    ds = _fragmented_source(frames, source_syntax)

    result = Transcoder(target, verify=True).transcode(ds)

    pixel_data = result.dataset.PixelData
    offsets = parse_basic_offsets(pixel_data)
    assert len(offsets) == 3
    assert offsets[0] == 0
    fragmented = list(generate_fragmented_frames(pixel_data, number_of_frames=3))
    assert [len(fragments) for fragments in fragmented] == [1, 1, 1]
    position = 0
    for offset, (fragment,) in zip(offsets, fragmented, strict=True):
        assert offset == position
        assert len(fragment) % 2 == 0
        position += 8 + len(fragment)
    decoded = decode_dataset(result.dataset, result.transfer_syntax)[..., 0]
    assert np.array_equal(decoded, frames)


def test_odd_native_length_is_padded() -> None:
    """A 3 x 3 RGB frame (27 bytes) decoded to native gets a padding byte."""
    rgb = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    encoded = Transcoder("RLELossless").transcode(
        make_dataset(rgb.tobytes() + b"\x00", rows=3, columns=3, samples=3,
                     allocated=8, stored=8, photometric="RGB")
    )

    result = Transcoder("ExplicitVRLittleEndian").transcode(encoded.dataset)

    assert len(result.dataset.PixelData) == 28
    assert result.dataset.PixelData[:27] == rgb.tobytes()


def test_16_bit_into_jpeg_baseline_rejected() -> None:
    """16-bit data cannot go into JPEG Baseline; the error names what would work."""
    ds = make_dataset(np.zeros((8, 8), "<u2").tobytes(), rows=8, columns=8)
    transcoder = Transcoder("JPEGBaseline", allow_lossy=True)

    with pytest.raises(UnsupportedTransferSyntaxError,
                       match=r"16-bit unsigned .*Bits Allocated 16") as info:
        transcoder.transcode(ds)

    assert "JPEGLSLossless" in str(info.value)
    assert "JPEGBaseline8Bit" not in str(info.value).split("can: ")[1]


def test_float_pixels_into_jpeg_rejected() -> None:
    """Float Pixel Data fits no compressed syntax, only the native ones."""
    ds = make_dataset(b"", rows=4, columns=4)
    del ds.PixelData
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.linspace(-1, 1, 16, dtype="<f4").tobytes()

    with pytest.raises(UnsupportedTransferSyntaxError,
                       match=r"FloatPixelData \(32-bit float pixels\)") as info:
        Transcoder("JPEGLosslessSV1").transcode(ds)

    assert (
        "can: ImplicitVRLittleEndian, ExplicitVRLittleEndian, "
        "DeflatedExplicitVRLittleEndian (SOP Instance UID" in str(info.value)
    )
    native = Transcoder("ExplicitVRLittleEndian").transcode(ds)
    assert native.dataset.FloatPixelData == ds.FloatPixelData


def test_verify_reports_differing_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A codec that damages frame 1 is caught by verification, naming the frame."""
    real_encode = transcode.codecs.imagecodecs.htj2k_encode
    calls = []

    def damaging_encode(frame: np.ndarray, **kwargs: object) -> bytes:
        calls.append(1)
        if len(calls) == 2:
            frame = frame.copy()
            frame[0, 0] ^= 1
        return real_encode(frame, **kwargs)

    monkeypatch.setattr(transcode.codecs.imagecodecs, "htj2k_encode", damaging_encode)
    frames = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    ds = make_dataset(frames.tobytes(), rows=16, columns=16, frames=3)

    with pytest.raises(TranscodeError, match=r"frame 1 of the HTJ2KLossless .* "
                                             r"differs from the source in 1 samples"):
        Transcoder("HTJ2KLossless", verify=True).transcode(ds)

    calls.clear()
    unverified = Transcoder("HTJ2KLossless", verify=False).transcode(ds)
    assert unverified.dataset.NumberOfFrames == 3
