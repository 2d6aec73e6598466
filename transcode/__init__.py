"""Re-encode DICOM data sets into the transfer syntax a receiver needs.

The package is usable on its own. It imports pydicom, NumPy and the codec
libraries, and nothing from the rest of dicomsend.
"""

from __future__ import annotations

import logging

from transcode.codecs import CodecOptions
from transcode.errors import (
    LossyNotAllowedError,
    TranscodeError,
    UnsupportedTransferSyntaxError,
)
from transcode.syntaxes import TRANSFER_SYNTAX_NAMES, resolve_transfer_syntax
from transcode.transcoder import Transcoder, TranscodeResult

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "TRANSFER_SYNTAX_NAMES",
    "CodecOptions",
    "LossyNotAllowedError",
    "TranscodeError",
    "TranscodeResult",
    "Transcoder",
    "UnsupportedTransferSyntaxError",
    "resolve_transfer_syntax",
]
