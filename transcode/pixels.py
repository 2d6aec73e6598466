"""The Image Pixel module: reading it, decoding pixel data, writing it back.

Decoded pixel data is always held as a NumPy array shaped
``(frames, rows, columns, samples)``, colour-by-pixel, in native byte order,
with the values pydicom returns: bits above Bits Stored cleared for unsigned
data and sign-extended for signed data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import imagecodecs
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pack_bits
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from transcode.errors import TranscodeError, UnsupportedTransferSyntaxError
from transcode.syntaxes import SYNTAXES, SyntaxFamily, TransferSyntaxInfo, syntax_label

logger = logging.getLogger(__name__)

__all__ = [
    "PIXEL_DATA_TAGS",
    "DecodedPixels",
    "PixelModule",
    "apply_pixel_module",
    "decode_pixels",
    "describe_pixels",
    "source_transfer_syntax",
    "swap_binary_values",
]

#: Pixel Data, Float Pixel Data and Double Float Pixel Data.
PIXEL_DATA_TAGS: tuple[BaseTag, ...] = (
    Tag(0x7FE00010),
    Tag(0x7FE00008),
    Tag(0x7FE00009),
)

_PIXEL_KEYWORDS = {
    Tag(0x7FE00010): "PixelData",
    Tag(0x7FE00008): "FloatPixelData",
    Tag(0x7FE00009): "DoubleFloatPixelData",
}

_IMAGECODECS_DECODERS = {
    SyntaxFamily.JPEG: imagecodecs.jpeg8_decode,
    SyntaxFamily.JPEG_LS: imagecodecs.jpegls_decode,
    SyntaxFamily.JPEG_2000: imagecodecs.jpeg2k_decode,
    SyntaxFamily.HTJ2K: imagecodecs.htj2k_decode,
}

# Byte width of one value for the binary VRs whose bytes pydicom keeps as read.
_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8, "US or OW": 2}


@dataclass(frozen=True, slots=True)
class PixelModule:
    """The Image Pixel module attributes that describe the pixel data.

    Attributes
    ----------
    rows, columns, number_of_frames, samples_per_pixel : int
        Geometry of the pixel data.
    bits_allocated, bits_stored : int
        (0028,0100) and (0028,0101). Float pixel data has no Bits Stored and
        uses ``bits_allocated`` for both.
    pixel_representation : int
        0 for unsigned, 1 for two's complement integers.
    photometric_interpretation : str
        (0028,0004), for example ``"MONOCHROME2"`` or ``"RGB"``.
    planar_configuration : int
        0 for colour-by-pixel, 1 for colour-by-plane; 0 when there is one sample.
    pixel_keyword : str
        ``"PixelData"``, ``"FloatPixelData"`` or ``"DoubleFloatPixelData"``.
    """

    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    pixel_keyword: str

    @property
    def is_float(self) -> bool:
        """True for Float Pixel Data and Double Float Pixel Data."""
        return self.pixel_keyword != "PixelData"

    @property
    def is_signed(self) -> bool:
        """True for two's complement integer pixels."""
        return self.pixel_representation == 1

    def describe(self) -> str:
        """Return a one-line summary for messages."""
        if self.is_float:
            kind = "float"
        elif self.is_signed:
            kind = "signed"
        else:
            kind = "unsigned"
        return (
            f"{self.bits_stored}-bit {kind} in {self.bits_allocated} allocated, "
            f"{self.samples_per_pixel} sample(s) per pixel, "
            f"{self.photometric_interpretation}"
        )


@dataclass(frozen=True, slots=True)
class DecodedPixels:
    """Decoded pixel data and the pixel module that describes it.

    Attributes
    ----------
    array : numpy.ndarray
        Shaped ``(frames, rows, columns, samples)``, native byte order.
    module : PixelModule
        Describes `array`; ``planar_configuration`` is always 0.
    """

    array: np.ndarray
    module: PixelModule

    def frame(self, index: int) -> np.ndarray:
        """Return frame `index`, shaped ``(rows, columns[, samples])``."""
        frame: np.ndarray = self.array[index]
        return frame[..., 0] if self.module.samples_per_pixel == 1 else frame


def source_transfer_syntax(ds: Dataset) -> UID:
    """Return the transfer syntax `ds` was read in.

    The file meta (0002,0010) wins. A data set read without file meta gets the
    syntax pydicom inferred while reading it (implicit or explicit VR, little
    or big endian).

    Raises
    ------
    TranscodeError
        If neither the file meta nor the reader records how `ds` was encoded.
    """
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))

    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    if implicit is None or little is None:
        raise TranscodeError(
            "Unable to tell the transfer syntax of a data set that has no "
            "(0002,0010) Transfer Syntax UID and was not read from a file; set "
            "ds.file_meta.TransferSyntaxUID"
        )
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def describe_pixels(ds: Dataset) -> PixelModule | None:
    """Return the pixel module of `ds`, or None when it has no pixel data.

    Raises
    ------
    TranscodeError
        If an Image Pixel module attribute that the pixel data needs is missing.
    """
    present = [tag for tag in PIXEL_DATA_TAGS if tag in ds]
    if not present:
        return None

    keyword = _PIXEL_KEYWORDS[present[0]]
    missing = [
        name
        for name in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated",
                     "PhotometricInterpretation")
        if ds.get(name) is None
    ]
    if keyword == "PixelData":
        integer_only = ("BitsStored", "PixelRepresentation")
        missing += [name for name in integer_only if ds.get(name) is None]
    if missing:
        raise TranscodeError(
            f"Unable to read the pixel data because the Image Pixel module lacks "
            f"{', '.join(missing)}"
        )

    try:
        bits_allocated = int(ds.BitsAllocated)
        samples = int(ds.SamplesPerPixel)
        planar = int(ds.get("PlanarConfiguration") or 0) if samples > 1 else 0
        return PixelModule(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            number_of_frames=int(ds.get("NumberOfFrames") or 1),
            samples_per_pixel=samples,
            bits_allocated=bits_allocated,
            bits_stored=int(ds.get("BitsStored") or bits_allocated),
            pixel_representation=int(ds.get("PixelRepresentation") or 0),
            photometric_interpretation=str(ds.PhotometricInterpretation).strip(),
            planar_configuration=planar,
            pixel_keyword=keyword,
        )
    except (TypeError, ValueError) as exc:
        raise TranscodeError(
            f"Unable to read the pixel data because an Image Pixel module value is "
            f"invalid: {exc}"
        ) from exc


def decode_pixels(ds: Dataset, transfer_syntax: str) -> DecodedPixels:
    """Decode all frames of the pixel data of `ds`.

    JPEG (ISO 10918) colour data labelled YBR_FULL or YBR_FULL_422 is converted
    to RGB, as JPEG decoders do, and the returned module then gives RGB. All
    other data keeps its colour space, except that native YBR_FULL_422 is
    upsampled to YBR_FULL and JPEG 2000 YBR_RCT/YBR_ICT come back as RGB.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A data set with pixel data in `transfer_syntax`.
    transfer_syntax : str
        The UID `ds` is encoded in.

    Returns
    -------
    DecodedPixels

    Raises
    ------
    UnsupportedTransferSyntaxError
        If no installed pydicom decoding plugin handles `transfer_syntax`.
    TranscodeError
        If decoding fails, or `ds` has no pixel data.
    """
    module = describe_pixels(ds)
    if module is None:
        raise TranscodeError("Unable to decode pixel data: the data set has none")

    # Decode.
    info = SYNTAXES.get(str(transfer_syntax))
    convert_to_rgb = info is not None and info.family is SyntaxFamily.JPEG
    try:
        decoder = get_decoder(UID(str(transfer_syntax)))
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            f"Unable to decode pixel data in {syntax_label(transfer_syntax)} as no "
            "pydicom decoder exists for it; send the file in its own transfer "
            "syntax instead"
        ) from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"Unable to decode pixel data in {syntax_label(transfer_syntax)} as no "
            "decoding plugin is installed; install one of: "
            + "; ".join(decoder.missing_dependencies)
        )
    try:
        array, meta = decoder.as_array(ds, raw=not convert_to_rgb)
    except Exception as exc:  # noqa: BLE001 - each plugin raises its own types
        # The fallback raises a TranscodeError naming this error if it fails too.
        array = _decode_with_imagecodecs(ds, module, info, exc)
        meta = {}

    # Normalise the shape and byte order.
    frames = module.number_of_frames
    samples = module.samples_per_pixel
    array = array.reshape(frames, module.rows, module.columns, samples)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))

    decoded_module = replace(
        module,
        photometric_interpretation=str(
            meta.get("photometric_interpretation", module.photometric_interpretation)
        ),
        bits_allocated=int(meta.get("bits_allocated", module.bits_allocated)),
        bits_stored=int(meta.get("bits_stored", module.bits_stored)),
        pixel_representation=int(
            meta.get("pixel_representation", module.pixel_representation)
        ),
        planar_configuration=0,
    )
    if module.bits_allocated == 1:
        # pydicom unpacks bit-packed data into one byte per pixel.
        decoded_module = replace(decoded_module, bits_allocated=1, bits_stored=1)
    logger.debug(
        "decoded %d frame(s) of %s from %s", frames, decoded_module.describe(),
        transfer_syntax,
    )
    return DecodedPixels(array=array, module=decoded_module)


def _decode_with_imagecodecs(ds: Dataset, module: PixelModule,
                             info: TransferSyntaxInfo | None,
                             pydicom_error: Exception) -> np.ndarray:
    """Decode monochrome frames with imagecodecs after pydicom's plugins failed.

    libjpeg-turbo reads some 12-bit JPEG Extended streams that libjpeg (the
    pylibjpeg plugin) rejects, such as the WG04 ``JPLY`` images. Colour is left
    to pydicom because imagecodecs decides colour conversion on its own.

    Raises
    ------
    TranscodeError
        Naming both failures, when imagecodecs cannot decode the data either.
    """
    decode = _IMAGECODECS_DECODERS.get(info.family) if info is not None else None
    message = (
        f"Unable to decode the pixel data ({module.describe()}) in "
        f"{syntax_label(info.uid if info else '?')}, so the file can only be sent "
        f"in its own transfer syntax: {pydicom_error}"
    )
    monochrome_integer = module.samples_per_pixel == 1 and not module.is_float
    if info is None or decode is None or not monochrome_integer:
        raise TranscodeError(message) from pydicom_error

    dtype = pixel_dtype(module)
    frames = []
    try:
        frame_count = module.number_of_frames
        encoded = generate_frames(ds.PixelData, number_of_frames=frame_count)
        for codestream in encoded:
            frame = np.asarray(decode(codestream))
            frames.append(_restore_sign(frame, module).astype(dtype))
        array = np.stack(frames).reshape(module.number_of_frames, module.rows,
                                         module.columns, 1)
    except Exception as exc:  # imagecodecs raises one class per codec
        raise TranscodeError(f"{message}; imagecodecs: {exc}") from exc

    logger.debug("pydicom could not decode %s, imagecodecs did", info.uid)
    return array


def _restore_sign(frame: np.ndarray, module: PixelModule) -> np.ndarray:
    """Fit `frame` into Bits Stored.

    Unsigned values are clipped, because a lossy 12-bit stream of 10-bit data
    can overshoot the range by a little, and masking would turn the brightest
    pixels black. Signed values are stored as their bit pattern, so they are
    masked and sign-extended.
    """
    values = frame.astype(np.int64)
    if not module.is_signed:
        return np.clip(values, 0, (1 << module.bits_stored) - 1)
    values &= (1 << module.bits_stored) - 1
    sign_bit = 1 << (module.bits_stored - 1)
    return (values ^ sign_bit) - sign_bit


def apply_pixel_module(ds: Dataset, module: PixelModule) -> None:
    """Write the attributes of `module` into `ds`, replacing what was there.

    Planar Configuration is written only for multi-sample data and removed
    otherwise. Float pixel data gets no Bits Stored, High Bit or Pixel
    Representation, as PS3.3 C.7.6.3 requires.
    """
    ds.Rows = module.rows
    ds.Columns = module.columns
    ds.SamplesPerPixel = module.samples_per_pixel
    ds.PhotometricInterpretation = module.photometric_interpretation
    ds.BitsAllocated = module.bits_allocated
    if not module.is_float:
        ds.BitsStored = module.bits_stored
        ds.HighBit = module.bits_stored - 1
        ds.PixelRepresentation = module.pixel_representation

    if module.samples_per_pixel > 1:
        ds.PlanarConfiguration = module.planar_configuration
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration


def native_pixel_bytes(decoded: DecodedPixels) -> bytes:
    """Return decoded pixels as native little endian Pixel Data, padded to even length.

    Bit-packed data (Bits Allocated 1) is packed again with pydicom's
    ``pack_bits``, frames back to back as PS3.5 8.1.1 requires.
    """
    if decoded.module.bits_allocated == 1:
        return bytes(pack_bits(decoded.array.ravel(), pad=True))
    data = decoded.array.astype(decoded.array.dtype.newbyteorder("<"), copy=False)
    raw = data.tobytes()
    return raw + b"\x00" if len(raw) % 2 else raw


def swap_binary_values(ds: Dataset) -> None:
    """Byte-swap the OW, OL, OF, OD and OV values of a big endian data set in place.

    pydicom converts numbers (US, SS, FL...) when it reads them, but keeps the
    bytes of these binary VRs as they were in the file, so a data set read as
    big endian and written as little endian needs them swapped. Pixel data is
    left alone: the caller replaces it with decoded pixels. Sequences are
    handled recursively.
    """
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                swap_binary_values(item)
            continue
        if elem.tag in PIXEL_DATA_TAGS or not isinstance(elem.value, bytes | bytearray):
            continue
        width = _SWAP_WIDTH.get(str(elem.VR))
        if width is None or len(elem.value) % width:
            continue
        swapped = np.frombuffer(elem.value, dtype=f">u{width}").astype(f"<u{width}")
        ds[elem.tag] = DataElement(elem.tag, elem.VR, swapped.tobytes())


def to_unsigned_bits(frame: np.ndarray, bits_stored: int) -> np.ndarray:
    """Return two's complement `frame` as the unsigned Bits Stored bit pattern."""
    unsigned_type = np.dtype(f"u{frame.dtype.itemsize}")
    mask = (1 << bits_stored) - 1
    pattern: np.ndarray = frame.view(unsigned_type) & unsigned_type.type(mask)
    return pattern


def pixel_dtype(module: PixelModule) -> Any:
    """Return the NumPy dtype that fits one sample of `module`."""
    if module.bits_allocated <= 8:
        size = 1
    elif module.bits_allocated <= 16:
        size = 2
    else:
        size = 4
    return np.dtype(f"{'i' if module.is_signed else 'u'}{size}")
