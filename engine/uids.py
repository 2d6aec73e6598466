"""UIDs the send path needs, and their names for log lines and messages.

pydicom takes about 0.2 s to import, which is most of a small batch's run
time, so the pass-through path uses the strings below and imports pydicom's
UID dictionary only when a name is actually wanted.
"""

from __future__ import annotations

from functools import lru_cache

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# Syntaxes whose pixel data is not compressed.
NATIVE_SYNTAXES = frozenset({
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
})
# Syntaxes a file falls back to, in order, when the receiver rejects its own.
UNCOMPRESSED_FALLBACKS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


@lru_cache(maxsize=512)
def uid_name(uid: str) -> str:
    """Return the registered name of ``uid``, or the UID itself if unknown."""
    from pydicom.uid import UID

    return UID(uid).name
