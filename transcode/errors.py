"""Exceptions raised by the ``transcode`` package.

The tree::

    TranscodeError                       a data set could not be re-encoded
    ├── UnsupportedTransferSyntaxError   the target cannot represent this pixel data,
    │                                    or no installed library decodes the source
    └── LossyNotAllowedError             the target is lossy and lossy output is off

Errors from pydicom and the codec libraries are chained with ``raise ... from``
so the original traceback stays available.
"""

from __future__ import annotations

__all__ = [
    "LossyNotAllowedError",
    "TranscodeError",
    "UnsupportedTransferSyntaxError",
]


class TranscodeError(Exception):
    """A data set could not be decoded, encoded or verified."""


class UnsupportedTransferSyntaxError(TranscodeError):
    """The target transfer syntax cannot represent the pixel data.

    Also raised when no installed library can decode the source transfer
    syntax. The message names the property that does not fit (bit depth,
    signedness, samples per pixel, photometric interpretation) and lists the
    transfer syntaxes that would accept the data.
    """


class LossyNotAllowedError(TranscodeError):
    """The target transfer syntax is lossy and lossy output was not allowed."""
