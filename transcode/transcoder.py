"""Re-encode a data set into another transfer syntax.

``Transcoder`` takes a pydicom data set, decodes its pixel data when it has
to, encodes it for the target transfer syntax, fixes the Image Pixel module
and the file meta, and optionally decodes the result again to prove that a
lossless target kept every pixel value.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import __version__ as pydicom_version
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from transcode.codecs import CodecOptions, check_encodable, encode_pixels
from transcode.errors import LossyNotAllowedError, TranscodeError
from transcode.pixels import (
    PIXEL_DATA_TAGS,
    DecodedPixels,
    PixelModule,
    apply_pixel_module,
    decode_pixels,
    describe_pixels,
    native_pixel_bytes,
    source_transfer_syntax,
    swap_binary_values,
)
from transcode.syntaxes import (
    SyntaxFamily,
    get_syntax_info,
    resolve_transfer_syntax,
    syntax_label,
)
from transcode.verify import verify_pixels

logger = logging.getLogger(__name__)

__all__ = ["TranscodeResult", "Transcoder"]

# Elements that describe the old encapsulated pixel data and are wrong for new data.
_STALE_PIXEL_TAGS = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)
# Values that lossy compression can invalidate.
_LOSSY_STALE_KEYWORDS = ("SmallestImagePixelValue", "LargestImagePixelValue")

DEFLATE_LEVEL = 6


@dataclass(frozen=True, slots=True)
class TranscodeResult:
    """The outcome of one ``Transcoder.transcode`` call.

    Attributes
    ----------
    dataset : pydicom.dataset.Dataset
        A new data set in `transfer_syntax`, with ``file_meta`` set. The source
        data set is not modified.
    transfer_syntax : pydicom.uid.UID
        The transfer syntax `dataset` is encoded in. It differs from the target
        only for objects without pixel data and a compressed target, which are
        sent in Explicit VR Little Endian.
    sop_instance_uid : str
        The SOP Instance UID of `dataset`: new when a lossy encoding replaced
        it, otherwise the original.
    source_transfer_syntax : pydicom.uid.UID
        The transfer syntax of the input.
    lossy : bool
        True when this call applied lossy compression.
    compression_ratio : float or None
        Uncompressed size over encoded size for encapsulated output, else None.
    """

    dataset: Dataset
    transfer_syntax: UID
    sop_instance_uid: str
    source_transfer_syntax: UID
    lossy: bool = False
    compression_ratio: float | None = None

    def dataset_bytes(self) -> bytes:
        """Return the data set as it goes on the wire.

        Returns
        -------
        bytes
            The data set without preamble or file meta, encoded in
            `transfer_syntax`, and deflated for Deflated Explicit VR Little Endian.
        """
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = self.transfer_syntax == ImplicitVRLittleEndian
        write_dataset(fp, self.dataset)
        data = fp.getvalue()
        if self.transfer_syntax != DeflatedExplicitVRLittleEndian:
            return data

        compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = compressor.compress(data) + compressor.flush()
        return deflated + b"\x00" if len(deflated) % 2 else deflated


class Transcoder:
    """Re-encode data sets into one target transfer syntax.

    Parameters
    ----------
    target_uid : str
        Target transfer syntax as a UID or a name accepted by
        ``resolve_transfer_syntax``.
    allow_lossy : bool, optional
        Allow lossy targets (JPEG Baseline and Extended, JPEG-LS Near-Lossless,
        JPEG 2000 ``.91``, HTJ2K ``.203``). Off by default.
    verify : bool, optional
        Decode each result again: for lossless output compare every frame with
        the source pixels, for lossy output check that it decodes.
    options : CodecOptions, optional
        Encoder settings (JPEG quality, JPEG-LS NEAR, JPEG 2000 ratio, HTJ2K
        quantization step, JPEG Lossless predictor).
    keep_sop_instance_uid : bool, optional
        Keep the SOP Instance UID after lossy compression. By default lossy
        output gets a new UID, because it is a new image (PS3.3 C.7.6.1.1.5).

    Raises
    ------
    ValueError
        If `target_uid` is unknown or cannot be a target.
    """

    def __init__(
        self,
        target_uid: str,
        allow_lossy: bool = False,
        verify: bool = False,
        options: CodecOptions | None = None,
        keep_sop_instance_uid: bool = False,
    ) -> None:
        self.target_uid = resolve_transfer_syntax(target_uid)
        self.allow_lossy = allow_lossy
        self.verify = verify
        self.options = options or CodecOptions()
        self.keep_sop_instance_uid = keep_sop_instance_uid
        self._target = get_syntax_info(self.target_uid)

    def __repr__(self) -> str:
        return (
            f"Transcoder({syntax_label(self.target_uid)}, allow_lossy="
            f"{self.allow_lossy}, verify={self.verify})"
        )

    def needs_transcoding(self, file_transfer_syntax_uid: str) -> bool:
        """Return True unless a file in `file_transfer_syntax_uid` can be sent as it is.

        Every other syntax needs work: implicit and explicit VR differ in every
        element header even when the pixel data stays the same.
        """
        return str(file_transfer_syntax_uid) != self.target_uid

    def transcode(self, dataset: Dataset) -> TranscodeResult:
        """Return `dataset` re-encoded in the target transfer syntax.

        Parameters
        ----------
        dataset : pydicom.dataset.Dataset
            A data set read from a file, with or without file meta. It is not
            modified.

        Returns
        -------
        TranscodeResult

        Raises
        ------
        LossyNotAllowedError
            If the target is lossy, the data set has pixel data in another
            syntax, and ``allow_lossy`` is False.
        UnsupportedTransferSyntaxError
            If the target cannot represent the pixel data (the message lists
            the syntaxes that can), or no installed library decodes the source.
        TranscodeError
            If decoding, encoding or verification fails.
        """
        try:
            return self._transcode(dataset)
        except TranscodeError as exc:
            # Name the object, so that a caller with many files can find it.
            uid = dataset.get("SOPInstanceUID", "<none>")
            raise type(exc)(f"{exc} (SOP Instance UID {uid})") from exc

    def _transcode(self, dataset: Dataset) -> TranscodeResult:
        source_uid = source_transfer_syntax(dataset)
        has_pixels = any(tag in dataset for tag in PIXEL_DATA_TAGS)
        target_uid = self.target_uid
        if not has_pixels and self._target.encapsulated:
            # Nothing to compress: the object goes in plain explicit VR.
            target_uid = ExplicitVRLittleEndian
        target = get_syntax_info(target_uid)

        out = _copy_without_pixels(dataset)
        if source_uid == ExplicitVRBigEndian:
            swap_binary_values(out)

        lossy = False
        lossy_method: str | None = None
        ratio: float | None = None
        decoded: DecodedPixels | None = None
        if not has_pixels:
            pass
        elif self._can_copy_pixels(source_uid, target_uid):
            # The pixel bytes stay valid, so even an incomplete pixel module is
            # passed on untouched.
            for tag in PIXEL_DATA_TAGS:
                if tag in dataset:
                    out[tag] = copy.copy(dataset[tag])
        elif not target.encapsulated:
            decoded = decode_pixels(dataset, source_uid)
            _set_native_pixels(out, decoded)
        else:
            module = describe_pixels(dataset)
            assert module is not None  # has_pixels is True
            if target.lossy and not self.allow_lossy:
                raise LossyNotAllowedError(
                    f"Unable to encode in {syntax_label(target_uid)} as it is lossy "
                    "and lossy compression is not allowed; allow lossy output or "
                    "choose a lossless transfer syntax"
                )
            check_encodable(target_uid, _expected_decoded(module, source_uid))
            decoded = decode_pixels(dataset, source_uid)
            ratio, lossy_method = self._set_encoded_pixels(out, decoded, target_uid)
            lossy = lossy_method is not None

        if not target.encapsulated and _has_encapsulated_icon(out):
            _decode_icons(out, source_uid)
        if lossy_method is not None:
            self._mark_lossy(out, lossy_method, ratio)

        out.file_meta = _file_meta(dataset, out, target_uid)
        if self.verify and decoded is not None:
            verify_pixels(out, target_uid, decoded, lossy=lossy)

        sop_instance_uid = str(out.get("SOPInstanceUID", ""))
        logger.debug(
            "transcoded %s from %s to %s", sop_instance_uid, source_uid, target_uid
        )
        return TranscodeResult(
            dataset=out,
            transfer_syntax=UID(target_uid),
            sop_instance_uid=sop_instance_uid,
            source_transfer_syntax=source_uid,
            lossy=lossy,
            compression_ratio=ratio,
        )

    @staticmethod
    def _can_copy_pixels(source_uid: str, target_uid: str) -> bool:
        """Return True when the pixel data bytes stay valid in the target."""
        if source_uid == target_uid:
            return True
        little_endian_native = (
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            DeflatedExplicitVRLittleEndian,
        )
        return source_uid in little_endian_native and target_uid in little_endian_native

    def _set_encoded_pixels(self, out: Dataset, decoded: DecodedPixels,
                            target_uid: str) -> tuple[float, str | None]:
        """Encode `decoded` into `out` and return the ratio and the lossy method."""
        encoded = encode_pixels(target_uid, decoded, self.options)
        out.PixelData = encapsulate(list(encoded.frames), has_bot=True)
        out["PixelData"].VR = "OB"
        out["PixelData"].is_undefined_length = True
        apply_pixel_module(out, encoded.module)

        encoded_size = sum(len(frame) for frame in encoded.frames)
        return decoded.array.nbytes / max(encoded_size, 1), encoded.lossy_method

    def _mark_lossy(self, out: Dataset, method: str, ratio: float | None) -> None:
        """Set the Lossy Image Compression attributes and, by default, a new UID."""
        ratios = _as_list(out.get("LossyImageCompressionRatio"))
        methods = _as_list(out.get("LossyImageCompressionMethod"))
        out.LossyImageCompression = "01"
        out.LossyImageCompressionRatio = [*ratios, f"{ratio or 1.0:.2f}"]
        out.LossyImageCompressionMethod = [*methods, method]
        for keyword in _LOSSY_STALE_KEYWORDS:
            if keyword in out:
                delattr(out, keyword)

        if not self.keep_sop_instance_uid and "SOPInstanceUID" in out:
            old_uid = out.SOPInstanceUID
            out.SOPInstanceUID = generate_uid()
            logger.debug("lossy output of %s gets SOP Instance UID %s", old_uid,
                         out.SOPInstanceUID)


def _copy_without_pixels(dataset: Dataset) -> Dataset:
    """Return a deep copy of `dataset` without pixel data or file meta."""
    out = Dataset()
    for elem in dataset:
        if elem.tag in PIXEL_DATA_TAGS or elem.tag in _STALE_PIXEL_TAGS:
            continue
        out.add(copy.deepcopy(elem))
    _resolve_ob_or_ow(out)
    return out


def _resolve_ob_or_ow(ds: Dataset) -> None:
    """Give 'OB or OW' elements that pydicom leaves ambiguous the VR OW.

    pydicom resolves Pixel Data and Overlay Data from the pixel module when it
    writes explicit VR, but not retired elements such as Curve Data (50xx,3000).
    """
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _resolve_ob_or_ow(item)
        elif elem.VR == "OB or OW" and (elem.tag.group & 0xFF00) != 0x6000:
            elem.VR = "OW"


def _expected_decoded(module: PixelModule, source_uid: str) -> PixelModule:
    """Return the pixel module ``decode_pixels`` will report, without decoding."""
    photometric = module.photometric_interpretation
    family = get_syntax_info(source_uid).family if _known(source_uid) else None
    if photometric in ("YBR_RCT", "YBR_ICT"):
        photometric = "RGB"
    elif photometric.startswith("YBR_FULL"):
        photometric = "RGB" if family is SyntaxFamily.JPEG else "YBR_FULL"
    return PixelModule(
        rows=module.rows,
        columns=module.columns,
        number_of_frames=module.number_of_frames,
        samples_per_pixel=module.samples_per_pixel,
        bits_allocated=module.bits_allocated,
        bits_stored=module.bits_stored,
        pixel_representation=module.pixel_representation,
        photometric_interpretation=photometric,
        planar_configuration=0,
        pixel_keyword=module.pixel_keyword,
    )


def _known(uid: str) -> bool:
    try:
        get_syntax_info(uid)
    except ValueError:
        return False
    return True


def _set_native_pixels(out: Dataset, decoded: DecodedPixels) -> None:
    keyword = decoded.module.pixel_keyword
    data = native_pixel_bytes(decoded)
    setattr(out, keyword, data)
    if keyword == "PixelData":
        out["PixelData"].VR = "OB" if decoded.module.bits_allocated <= 8 else "OW"
    apply_pixel_module(out, decoded.module)


def _has_encapsulated_icon(ds: Dataset) -> bool:
    icons = ds.get("IconImageSequence") or []
    return any(
        "PixelData" in item and item["PixelData"].is_undefined_length for item in icons
    )


def _decode_icons(out: Dataset, source_uid: str) -> None:
    """Decode encapsulated icons so that they match native output.

    Icons are optional thumbnails, so an icon that cannot be decoded is removed
    with a warning instead of failing the whole object.
    """
    for item in out.IconImageSequence:
        if "PixelData" not in item or not item["PixelData"].is_undefined_length:
            continue
        try:
            _set_native_pixels(item, decode_pixels(item, source_uid))
        except TranscodeError as exc:
            logger.warning(
                "removed the Icon Image Sequence of %s as its pixel data could not "
                "be decoded: %s", out.get("SOPInstanceUID", "<no UID>"), exc
            )
            del out.IconImageSequence
            return


def _file_meta(source: Dataset, out: Dataset, target_uid: str) -> FileMetaDataset:
    """Return file meta for `out`: the source's, updated for the new encoding."""
    meta = FileMetaDataset()
    source_meta = getattr(source, "file_meta", None)
    if source_meta is not None:
        for elem in source_meta:
            meta.add(copy.deepcopy(elem))

    meta.FileMetaInformationVersion = b"\x00\x01"
    if "SOPClassUID" in out:
        meta.MediaStorageSOPClassUID = out.SOPClassUID
    if "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = UID(target_uid)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom_version}"[:16]
    return meta


def _as_list(value: object) -> list[object]:
    """Return the values of a possibly multi-valued element value as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return list(value)
    return [value]

