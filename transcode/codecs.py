"""Encoder choice per transfer syntax, and the limits of each encoder.

Encoders, all from maintained libraries:

* RLE Lossless, JPEG-LS (``.80``, ``.81``) and JPEG 2000 (``.90``, ``.91``)
  go through pydicom's encoders, which call pylibjpeg-rle (or pydicom's own
  RLE code), pyjpegls (CharLS) and pylibjpeg-openjpeg (OpenJPEG).
* JPEG (``.50``, ``.51``, ``.57``, ``.70``) goes through imagecodecs'
  libjpeg-turbo 3 binding, which writes 8-bit and 12-bit DCT streams and
  lossless (process 14) streams of 2 to 16 bits.
* HTJ2K (``.201``, ``.202``, ``.203``) goes through imagecodecs' OpenJPH binding.

Decoding is pydicom's job (see ``transcode.pixels``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import imagecodecs
import numpy as np
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import UID

from transcode.errors import TranscodeError, UnsupportedTransferSyntaxError
from transcode.pixels import DecodedPixels, PixelModule, to_unsigned_bits
from transcode.syntaxes import SYNTAXES, SyntaxFamily, get_syntax_info, syntax_label

logger = logging.getLogger(__name__)

__all__ = [
    "CodecOptions",
    "EncodedPixels",
    "check_encodable",
    "encodable_targets",
    "encode_pixels",
    "frame_encoder",
    "output_module",
    "unsupported_reason",
]

# (0028,2114) Lossy Image Compression Method values, from PS3.3 C.7.6.1.1.5.1.
LOSSY_METHODS = {
    SyntaxFamily.JPEG: "ISO_10918_1",
    SyntaxFamily.JPEG_LS: "ISO_14495_1",
    SyntaxFamily.JPEG_2000: "ISO_15444_1",
    SyntaxFamily.HTJ2K: "ISO_15444_15",
}

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_ENCODABLE_PHOTOMETRICS = (*_MONOCHROME, "PALETTE COLOR", "RGB", "YBR_FULL")


@dataclass(frozen=True, slots=True)
class CodecOptions:
    """Encoder settings; the lossy ones apply only when lossy output is allowed.

    Attributes
    ----------
    jpeg_quality : int
        libjpeg-turbo quality, 1 to 100, for JPEG Baseline and JPEG Extended.
    jpegls_max_error : int
        JPEG-LS NEAR parameter: the largest absolute difference allowed between
        a source and a decoded sample in JPEG-LS Near-Lossless, 1 or more.
    j2k_compression_ratio : float
        Target compression ratio for lossy JPEG 2000 (``.91``), above 1.
    htj2k_quantization_step : float
        Base quantization step for lossy HTJ2K (``.203``) as a fraction of the
        Bits Stored range, between 0 and 1; smaller keeps more detail.
    jpeg_lossless_predictor : int
        Selection value (predictor) 1 to 7 for JPEG Lossless ``.57``. JPEG
        Lossless SV1 (``.70``) always uses 1.
    """

    jpeg_quality: int = 90
    jpegls_max_error: int = 2
    j2k_compression_ratio: float = 10.0
    htj2k_quantization_step: float = 0.005
    jpeg_lossless_predictor: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1 to 100, not {self.jpeg_quality}")
        if self.jpegls_max_error < 1:
            raise ValueError(
                f"jpegls_max_error must be 1 or more, not {self.jpegls_max_error}"
            )
        if self.j2k_compression_ratio <= 1:
            raise ValueError(
                "j2k_compression_ratio must be above 1, not "
                f"{self.j2k_compression_ratio}"
            )
        if not 0 < self.htj2k_quantization_step < 1:
            raise ValueError(
                "htj2k_quantization_step must be between 0 and 1, not "
                f"{self.htj2k_quantization_step}"
            )
        if not 1 <= self.jpeg_lossless_predictor <= 7:
            raise ValueError(
                "jpeg_lossless_predictor must be 1 to 7, not "
                f"{self.jpeg_lossless_predictor}"
            )


@dataclass(frozen=True, slots=True)
class EncodedPixels:
    """Encoded frames, one codestream per frame, and the pixel module they carry.

    Attributes
    ----------
    frames : tuple of bytes
        One codestream per frame, not yet encapsulated.
    module : PixelModule
        The pixel module that describes the encoded data.
    lossy_method : str or None
        The (0028,2114) value when the encoding is lossy, else None.
    """

    frames: tuple[bytes, ...]
    module: PixelModule
    lossy_method: str | None


def _bits_reason(module: PixelModule, allocated: tuple[int, ...], low: int,
                 high: int) -> str | None:
    if module.bits_allocated not in allocated:
        needed = " or ".join(str(bits) for bits in allocated)
        return f"Bits Allocated {module.bits_allocated} (needs {needed})"
    if not low <= module.bits_stored <= high:
        return f"Bits Stored {module.bits_stored} (needs {low} to {high})"
    return None


def unsupported_reason(target_uid: str, module: PixelModule) -> str | None:
    """Return why `target_uid` cannot hold pixel data like `module`, or None if it can.

    The limits are those of PS3.5 section 8.2 and of the encoder libraries.
    Native syntaxes accept everything.
    """
    info = get_syntax_info(target_uid)
    family = info.family
    if not info.encapsulated:
        return None

    # Checks that hold for every encapsulated syntax.
    if module.is_float:
        return f"{module.pixel_keyword} ({module.bits_allocated}-bit float pixels)"
    if module.bits_allocated == 1:
        return "bit-packed pixels (Bits Allocated 1)"
    if module.samples_per_pixel not in (1, 3):
        return f"{module.samples_per_pixel} samples per pixel (needs 1 or 3)"
    if module.photometric_interpretation not in _ENCODABLE_PHOTOMETRICS:
        return f"Photometric Interpretation {module.photometric_interpretation}"
    if module.samples_per_pixel == 3 and module.is_signed:
        return "signed colour pixels"
    if info.lossy and module.photometric_interpretation == "PALETTE COLOR":
        return "PALETTE COLOR pixels (palette indices must not be compressed lossily)"
    colour_ybr = module.photometric_interpretation == "YBR_FULL"

    # Checks of each family.
    if family is SyntaxFamily.RLE:
        if colour_ybr:
            return _bits_reason(module, (8,), 1, 8)
        return _bits_reason(module, (8, 16), 1, 16)

    if family is SyntaxFamily.JPEG_LS:
        if colour_ybr:
            return _bits_reason(module, (8,), 2, 8)
        return _bits_reason(module, (8, 16), 2, 16)

    if family is SyntaxFamily.JPEG_2000:
        if info.lossy and min(module.rows, module.columns) < 32:
            # pylibjpeg-openjpeg always uses 6 resolution levels, which OpenJPEG
            # cannot apply to smaller images; the lossless fallback has no ratio
            # control.
            return (
                f"images smaller than 32 pixels a side ({module.rows} x "
                f"{module.columns}) with lossy JPEG 2000"
            )
        # pylibjpeg-openjpeg encodes up to 24 bits per sample.
        return _bits_reason(module, (8, 16, 24, 32), 1, 24)

    if family is SyntaxFamily.HTJ2K:
        # OpenJPH is given 8- or 16-bit arrays through imagecodecs.
        return _bits_reason(module, (8, 16), 1, 16)

    # JPEG (ISO 10918).
    if not info.lossy:
        return _bits_reason(module, (8, 16), 2, 16)
    if module.is_signed:
        return f"signed pixels ({module.bits_stored}-bit two's complement)"
    if info.keyword == "JPEGBaseline8Bit":
        return _bits_reason(module, (8,), 1, 8)
    if module.samples_per_pixel != 1:
        return "colour pixels (JPEG Extended carries monochrome only, PS3.5 8.2.1)"
    return _bits_reason(module, (8, 16), 1, 12)


def encodable_targets(module: PixelModule) -> list[str]:
    """Return the keywords of the target syntaxes that accept data like `module`."""
    return [
        info.keyword
        for uid, info in SYNTAXES.items()
        if info.target and unsupported_reason(uid, module) is None
    ]


def check_encodable(target_uid: str, module: PixelModule) -> None:
    """Raise if `target_uid` cannot hold pixel data like `module`.

    Raises
    ------
    UnsupportedTransferSyntaxError
        Naming the property that does not fit and the syntaxes that would work.
    """
    reason = unsupported_reason(target_uid, module)
    if reason is None:
        return
    raise UnsupportedTransferSyntaxError(
        f"Unable to encode {module.describe()} pixel data in "
        f"{syntax_label(target_uid)} as it cannot represent {reason}; "
        f"transfer syntaxes that can: {', '.join(encodable_targets(module))}"
    )


def output_module(target_uid: str, module: PixelModule) -> PixelModule:
    """Return the pixel module of data like `module` once encoded in `target_uid`."""
    info = get_syntax_info(target_uid)
    out = replace(module, planar_configuration=0)
    if info.family is not SyntaxFamily.JPEG:
        return out
    if not info.lossy:
        if module.bits_stored <= 8:
            # An 8-bit lossless JPEG stream decodes to 8-bit samples, and
            # pydicom 3.0 cannot place those in a 16-bit container.
            out = replace(out, bits_allocated=8)
        return out

    # JPEG DCT streams: libjpeg-turbo stores colour as YCbCr 4:2:2.
    if module.samples_per_pixel == 3:
        out = replace(out, photometric_interpretation="YBR_FULL_422")
    if info.keyword == "JPEGBaseline8Bit" or module.bits_allocated == 8:
        return replace(out, bits_allocated=8, bits_stored=8)
    return replace(out, bits_allocated=16, bits_stored=12)


def encode_pixels(target_uid: str, decoded: DecodedPixels,
                  options: CodecOptions) -> EncodedPixels:
    """Encode every frame of `decoded` into `target_uid`, one codestream per frame.

    Parameters
    ----------
    target_uid : str
        An encapsulated target transfer syntax.
    decoded : DecodedPixels
        The source pixels.
    options : CodecOptions
        Encoder settings.

    Returns
    -------
    EncodedPixels

    Raises
    ------
    UnsupportedTransferSyntaxError
        If the target cannot represent the pixel data.
    TranscodeError
        If the encoder library fails on a frame.
    """
    info = get_syntax_info(target_uid)
    check_encodable(target_uid, decoded.module)
    if info.keyword == "JPEGLSNearLossless" and decoded.module.is_signed:
        _check_signed_near_lossless(decoded, options.jpegls_max_error)
    out_module = output_module(target_uid, decoded.module)
    encode_frame = frame_encoder(UID(target_uid), decoded.module, options)

    frames = []
    for index in range(decoded.module.number_of_frames):
        try:
            frames.append(bytes(encode_frame(decoded.frame(index))))
        except Exception as exc:  # each codec library raises its own types
            raise TranscodeError(
                f"Unable to encode frame {index} ({decoded.module.describe()}) "
                f"in {syntax_label(target_uid)}: {exc}"
            ) from exc

    method = LOSSY_METHODS[info.family] if info.lossy else None
    return EncodedPixels(frames=tuple(frames), module=out_module, lossy_method=method)


def _check_signed_near_lossless(decoded: DecodedPixels, max_error: int) -> None:
    """Raise unless signed values keep `max_error` away from both ends of the range.

    JPEG-LS codes the unsigned bit pattern, so a near-lossless error at either
    end of the signed range would wrap to the other end.
    """
    bits = decoded.module.bits_stored
    low = -(1 << (bits - 1)) + max_error
    high = (1 << (bits - 1)) - 1 - max_error
    smallest, largest = int(decoded.array.min()), int(decoded.array.max())
    if low <= smallest and largest <= high:
        return
    module = decoded.module
    others = [
        name for name in encodable_targets(module) if name != "JPEGLSNearLossless"
    ]
    raise UnsupportedTransferSyntaxError(
        f"Unable to encode {module.describe()} pixel data in JPEGLSNearLossless "
        f"(1.2.840.10008.1.2.4.81) as signed values must lie in {low} to {high} "
        f"for a NEAR of {max_error}, but they span {smallest} to {largest}; "
        f"transfer syntaxes that can: {', '.join(others)}"
    )


FrameEncoder = Callable[[np.ndarray], bytes]


def frame_encoder(uid: UID, module: PixelModule, options: CodecOptions) -> FrameEncoder:
    """Return a function that encodes one frame of `module` into `uid`.

    The function takes a frame shaped ``(rows, columns)`` or
    ``(rows, columns, samples)`` and returns one codestream. It does not check
    that the target can hold the data; ``check_encodable`` does.
    """
    family = get_syntax_info(uid).family
    if family in (SyntaxFamily.RLE, SyntaxFamily.JPEG_LS, SyntaxFamily.JPEG_2000):
        return _pydicom_encoder(uid, module, options)
    if family is SyntaxFamily.HTJ2K:
        return _htj2k_encoder(uid, module, options)
    return _jpeg_encoder(uid, module, options)


def _pydicom_encoder(uid: UID, module: PixelModule,
                     options: CodecOptions) -> FrameEncoder:
    encoder = get_encoder(uid)
    kwargs: dict[str, Any] = {
        "rows": module.rows,
        "columns": module.columns,
        "number_of_frames": 1,
        "samples_per_pixel": module.samples_per_pixel,
        "bits_allocated": module.bits_allocated,
        "bits_stored": module.bits_stored,
        "pixel_representation": module.pixel_representation,
        "photometric_interpretation": module.photometric_interpretation,
        "planar_configuration": 0,
    }
    keyword = get_syntax_info(uid).keyword
    if keyword == "RLELossless":
        # RLE codes whole Bits Allocated containers (one segment per byte);
        # pydicom would size them from Bits Stored instead.
        kwargs["bits_stored"] = module.bits_allocated
    if keyword == "JPEGLSNearLossless":
        kwargs["jls_error"] = options.jpegls_max_error
    elif keyword == "JPEG2000":
        kwargs["j2k_cr"] = [options.j2k_compression_ratio]
    if get_syntax_info(uid).family is SyntaxFamily.JPEG_2000:
        # Without the colour transform the Photometric Interpretation stays true.
        kwargs["use_mct"] = False

    fallback = _imagecodecs_fallback(uid, module)

    def encode(frame: np.ndarray) -> bytes:
        frame = np.ascontiguousarray(frame)
        try:
            return encoder.encode(frame, **kwargs)
        except Exception as exc:  # each plugin raises its own types
            if fallback is None:
                raise
            pydicom_error = exc
        try:
            codestream = fallback(frame)
        except Exception as exc:  # imagecodecs raises one class per codec
            raise TranscodeError(
                f"pydicom: {pydicom_error}; imagecodecs: {exc}"
            ) from exc
        logger.debug("pydicom could not encode %s (%s), imagecodecs did",
                     uid, pydicom_error)
        return codestream

    return encode


def _imagecodecs_fallback(uid: UID, module: PixelModule) -> FrameEncoder | None:
    """Return an imagecodecs encoder for frames that pydicom's plugins reject.

    pylibjpeg-openjpeg always asks for 6 resolution levels, which OpenJPEG
    rejects for images under 32 pixels a side, and pyjpegls fails on some tiny
    images (3 x 3 RGB). imagecodecs takes both, but its JPEG-LS precision is the array's
    bit width, so it only covers unsigned data and signed data that fills
    Bits Allocated. Lossy syntaxes get no fallback.
    """
    keyword = get_syntax_info(uid).keyword
    if keyword == "JPEG2000Lossless":
        resolutions = max(1, min(6, min(module.rows, module.columns).bit_length()))

        def encode_j2k(frame: np.ndarray) -> bytes:
            return bytes(imagecodecs.jpeg2k_encode(
                frame, level=0, codecformat="J2K", reversible=True, mct=False,
                bitspersample=module.bits_stored, resolutions=resolutions,
            ))

        return encode_j2k

    signed_partial = module.is_signed and module.bits_stored != module.bits_allocated
    if keyword == "JPEGLSLossless" and not signed_partial:

        def encode_jls(frame: np.ndarray) -> bytes:
            if module.is_signed:
                frame = to_unsigned_bits(frame, module.bits_stored)
            return bytes(imagecodecs.jpegls_encode(frame))

        return encode_jls

    return None


def _htj2k_encoder(uid: UID, module: PixelModule,
                   options: CodecOptions) -> FrameEncoder:
    keyword = get_syntax_info(uid).keyword
    kwargs: dict[str, Any] = {"rgb": False, "planar": False}
    if keyword == "HTJ2K":
        # OpenJPH measures the step against the codestream precision, which is
        # the array width (8 or 16 bits); rescale it to the Bits Stored range.
        precision = 8 if module.bits_allocated == 8 else 16
        step = options.htj2k_quantization_step * 2.0 ** (module.bits_stored - precision)
        kwargs.update(reversible=False, level=step)
    else:
        kwargs["reversible"] = True
    if keyword == "HTJ2KLosslessRPCL":
        # This syntax restricts HTJ2K to RPCL progression order with a TLM
        # marker segment (PS3.5 section 8.2.14). RPCL is OpenJPH's default
        # order; splitting tile-parts by resolution is our choice.
        kwargs.update(tlm=True, tilepart=1)

    def encode(frame: np.ndarray) -> bytes:
        return bytes(imagecodecs.htj2k_encode(np.ascontiguousarray(frame), **kwargs))

    return encode


def _jpeg_encoder(uid: UID, module: PixelModule, options: CodecOptions) -> FrameEncoder:
    keyword = get_syntax_info(uid).keyword
    colour = module.samples_per_pixel == 3

    if keyword in ("JPEGLossless", "JPEGLosslessSV1"):
        predictor = options.jpeg_lossless_predictor
        if keyword == "JPEGLosslessSV1":
            predictor = 1
        bits = module.bits_stored
        kwargs: dict[str, Any] = {
            "lossless": True, "predictor": predictor, "bitspersample": bits,
        }
        if colour:
            # No colour transform: the samples are stored as they are.
            kwargs.update(colorspace="RGB", outcolorspace="RGB")

        # libjpeg-turbo takes 8-bit arrays for up to 8 bits, 16-bit ones above.
        dtype = np.uint8 if bits <= 8 else np.uint16

        def encode_lossless(frame: np.ndarray) -> bytes:
            if module.is_signed:
                frame = to_unsigned_bits(frame, bits)
            frame = np.ascontiguousarray(frame, dtype=dtype)
            return bytes(imagecodecs.jpeg8_encode(frame, **kwargs))

        return encode_lossless

    # DCT-based: 8 bits for Baseline, 8 or 12 bits for Extended.
    precision = 8 if module.bits_allocated == 8 else 12
    lossy_kwargs: dict[str, Any] = {"level": options.jpeg_quality,
                                       "bitspersample": precision}
    if colour:
        lossy_kwargs.update(colorspace="RGB", outcolorspace="YCBCR", subsampling="422")

    def encode_lossy(frame: np.ndarray) -> bytes:
        if colour and module.photometric_interpretation == "YBR_FULL":
            frame = convert_color_space(frame, "YBR_FULL", "RGB")
        dtype = np.uint8 if precision == 8 else np.uint16
        frame = np.ascontiguousarray(frame, dtype=dtype)
        return bytes(imagecodecs.jpeg8_encode(frame, **lossy_kwargs))

    return encode_lossy
