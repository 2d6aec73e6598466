"""Decode an encoded result again and compare it with the source pixels."""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from transcode.errors import TranscodeError
from transcode.pixels import DecodedPixels, describe_pixels
from transcode.syntaxes import syntax_label

logger = logging.getLogger(__name__)

__all__ = ["decode_dataset", "verify_pixels"]


def decode_dataset(ds: Dataset, transfer_syntax: str, raw: bool = True) -> np.ndarray:
    """Return all frames of `ds` shaped ``(frames, rows, columns, samples)``.

    With `raw` (the default) the stored colour space is kept; pass False to
    get RGB from YBR data, as a viewer would.

    Raises
    ------
    TranscodeError
        If `ds` has no pixel data.
    """
    module = describe_pixels(ds)
    if module is None:
        raise TranscodeError("Unable to decode pixel data: the data set has none")
    array, _ = get_decoder(UID(str(transfer_syntax))).as_array(ds, raw=raw)
    array = array.reshape(
        module.number_of_frames, module.rows, module.columns, module.samples_per_pixel
    )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def verify_pixels(ds: Dataset, transfer_syntax: str, source: DecodedPixels,
                  lossy: bool) -> None:
    """Decode the pixel data of `ds` and check it against `source`.

    Lossless output must match `source` sample for sample in every frame.
    Lossy output only has to decode to the expected shape.

    Raises
    ------
    TranscodeError
        If the output cannot be decoded, or a frame differs (the message gives
        the first frame that differs, how many samples differ and the largest
        difference).
    """
    label = syntax_label(transfer_syntax)
    try:
        decoded = decode_dataset(ds, transfer_syntax, raw=True)
    except Exception as exc:  # pydicom and each plugin raise their own types
        raise TranscodeError(
            f"Verification failed: unable to decode the {label} output again: {exc}"
        ) from exc

    expected = source.array
    if decoded.shape != expected.shape:
        raise TranscodeError(
            f"Verification failed: the {label} output decodes to shape "
            f"{decoded.shape}, the source to {expected.shape}"
        )
    if lossy:
        return

    for index in range(expected.shape[0]):
        got = decoded[index].astype(np.int64)
        want = expected[index].astype(np.int64)
        if np.array_equal(got, want):
            continue
        differing = int(np.count_nonzero(got != want))
        largest = int(np.abs(got - want).max())
        raise TranscodeError(
            f"Verification failed: frame {index} of the {label} output differs from "
            f"the source in {differing} samples (largest difference {largest}); "
            "the encoder or decoder is faulty for this data, so send the file in "
            "another transfer syntax"
        )
    logger.debug("verified %d frame(s) of %s output", expected.shape[0], label)
