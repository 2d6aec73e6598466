"""Names, UIDs and properties of the transfer syntaxes that ``transcode`` handles.

A transfer syntax can be named by its UID or by its keyword as ``pydicom.uid``
spells it (``JPEGBaseline8Bit``). Two older names are accepted as aliases:
``JPEGBaseline`` and ``JPEGExtended``.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from pydicom.uid import UID

logger = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "SYNTAXES",
    "TRANSFER_SYNTAX_NAMES",
    "SyntaxFamily",
    "TransferSyntaxInfo",
    "get_syntax_info",
    "resolve_transfer_syntax",
    "syntax_label",
]


class SyntaxFamily(enum.Enum):
    """Storage form of the pixel data of a transfer syntax."""

    NATIVE = "native"
    DEFLATED = "deflated"
    DEFLATED_FRAMES = "deflated frames"
    RLE = "rle"
    JPEG = "jpeg"
    JPEG_LS = "jpeg-ls"
    JPEG_2000 = "jpeg 2000"
    HTJ2K = "htj2k"


@dataclass(frozen=True, slots=True)
class TransferSyntaxInfo:
    """Properties of one transfer syntax.

    Attributes
    ----------
    uid : pydicom.uid.UID
        The transfer syntax UID.
    keyword : str
        The keyword as ``pydicom.uid`` spells it.
    family : SyntaxFamily
        How the pixel data is stored.
    lossy : bool
        True when encoding into this syntax may change pixel values, which is
        the case for every syntax that permits lossy compression (JPEG 2000
        ``.91`` and HTJ2K ``.203`` included, even though they can be lossless).
    target : bool
        True when ``transcode`` can encode into this syntax.
    """

    uid: UID
    keyword: str
    family: SyntaxFamily
    lossy: bool
    target: bool

    @property
    def encapsulated(self) -> bool:
        """True when the pixel data is encapsulated (compressed frames)."""
        return self.family not in (SyntaxFamily.NATIVE, SyntaxFamily.DEFLATED)


def _info(uid: str, keyword: str, family: SyntaxFamily, lossy: bool = False,
          target: bool = True) -> TransferSyntaxInfo:
    return TransferSyntaxInfo(UID(uid), keyword, family, lossy, target)


_F = SyntaxFamily

#: Every transfer syntax that ``transcode`` recognises, by UID.
SYNTAXES: dict[str, TransferSyntaxInfo] = {
    info.uid: info
    for info in (
        _info("1.2.840.10008.1.2", "ImplicitVRLittleEndian", _F.NATIVE),
        _info("1.2.840.10008.1.2.1", "ExplicitVRLittleEndian", _F.NATIVE),
        _info("1.2.840.10008.1.2.1.99", "DeflatedExplicitVRLittleEndian",
              _F.DEFLATED),
        # Retired from the standard: decoded on input, never sent.
        _info("1.2.840.10008.1.2.2", "ExplicitVRBigEndian", _F.NATIVE,
              target=False),
        # Pixel data deflated frame by frame: pydicom 3.0 has no decoder.
        _info("1.2.840.10008.1.2.8.1", "DeflatedImageFrameCompression",
              _F.DEFLATED_FRAMES, target=False),
        _info("1.2.840.10008.1.2.5", "RLELossless", _F.RLE),
        _info("1.2.840.10008.1.2.4.50", "JPEGBaseline8Bit", _F.JPEG, lossy=True),
        _info("1.2.840.10008.1.2.4.51", "JPEGExtended12Bit", _F.JPEG, lossy=True),
        _info("1.2.840.10008.1.2.4.57", "JPEGLossless", _F.JPEG),
        _info("1.2.840.10008.1.2.4.70", "JPEGLosslessSV1", _F.JPEG),
        _info("1.2.840.10008.1.2.4.80", "JPEGLSLossless", _F.JPEG_LS),
        _info("1.2.840.10008.1.2.4.81", "JPEGLSNearLossless", _F.JPEG_LS,
              lossy=True),
        _info("1.2.840.10008.1.2.4.90", "JPEG2000Lossless", _F.JPEG_2000),
        _info("1.2.840.10008.1.2.4.91", "JPEG2000", _F.JPEG_2000, lossy=True),
        # Multi-component JPEG 2000 (Part 2): pydicom has no decoder for it.
        _info("1.2.840.10008.1.2.4.92", "JPEG2000MCLossless", _F.JPEG_2000,
              target=False),
        _info("1.2.840.10008.1.2.4.93", "JPEG2000MC", _F.JPEG_2000, lossy=True,
              target=False),
        _info("1.2.840.10008.1.2.4.201", "HTJ2KLossless", _F.HTJ2K),
        _info("1.2.840.10008.1.2.4.202", "HTJ2KLosslessRPCL", _F.HTJ2K),
        _info("1.2.840.10008.1.2.4.203", "HTJ2K", _F.HTJ2K, lossy=True),
    )
}

#: Older names that people still use for two JPEG syntaxes.
ALIASES: dict[str, str] = {
    "JPEGBaseline": "1.2.840.10008.1.2.4.50",
    "JPEGExtended": "1.2.840.10008.1.2.4.51",
}

#: Every accepted name (keyword or alias) and the UID it stands for.
TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    **{info.keyword: uid for uid, info in SYNTAXES.items()},
    **ALIASES,
}


def get_syntax_info(uid: str) -> TransferSyntaxInfo:
    """Return the properties of the transfer syntax `uid`.

    Raises
    ------
    ValueError
        If `uid` is not in ``SYNTAXES``.
    """
    try:
        return SYNTAXES[str(uid)]
    except KeyError:
        raise ValueError(
            f"Unknown transfer syntax UID '{uid}'; known UIDs are "
            + ", ".join(sorted(SYNTAXES))
        ) from None


def syntax_label(uid: str) -> str:
    """Return ``"<keyword> (<uid>)"`` for messages, or the UID alone if unknown."""
    info = SYNTAXES.get(str(uid))
    return f"{info.keyword} ({uid})" if info else str(uid)


def resolve_transfer_syntax(name_or_uid: str) -> UID:
    """Return the UID of a target transfer syntax given by name or UID.

    Parameters
    ----------
    name_or_uid : str
        A UID such as ``"1.2.840.10008.1.2.4.50"``, a keyword as ``pydicom.uid``
        spells it (``"JPEGBaseline8Bit"``), or one of the aliases
        ``"JPEGBaseline"`` and ``"JPEGExtended"``. Keywords are matched without
        regard to case.

    Returns
    -------
    pydicom.uid.UID
        The transfer syntax UID.

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the valid names), or if it
        names a syntax that is decoded but never sent: Explicit VR Big Endian
        (retired) and the multi-component JPEG 2000 syntaxes.
    """
    text = str(name_or_uid).strip()
    uid = text if text in SYNTAXES else None
    if uid is None:
        by_lower = {
            name.lower(): value for name, value in TRANSFER_SYNTAX_NAMES.items()
        }
        uid = by_lower.get(text.lower())

    if uid is None:
        targets = [name for name, value in TRANSFER_SYNTAX_NAMES.items()
                   if SYNTAXES[value].target]
        raise ValueError(
            f"Unknown transfer syntax '{text}'; use a UID or one of: "
            + ", ".join(targets)
        )

    info = SYNTAXES[uid]
    if not info.target:
        reason = (
            "it is retired and is accepted only as input"
            if info.keyword == "ExplicitVRBigEndian"
            else "no installed library encodes or decodes it"
        )
        raise ValueError(
            f"Transfer syntax {syntax_label(uid)} cannot be a target because "
            f"{reason}; choose ExplicitVRLittleEndian or a compressed syntax"
        )

    return UID(uid)
