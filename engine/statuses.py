"""DIMSE status codes of C-STORE and C-ECHO responses, with their categories.

The codes and meanings come from PS3.7 Annex C (general statuses) and PS3.4
section B.2.3 (Storage Service Class statuses). The 0xA8xx range is an older
Storage status, "Refused: SOP class not supported", which DCMTK still names
``STATUS_STORE_Refused_SOPClassNotSupported``. A code in 0xB000 to 0xBFFF
that no table names is a warning, because PS3.7 Annex C reserves that range
for warnings. Any other code not listed here is treated as a failure, so a
file is never reported as stored on a status we cannot read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StatusCategory(enum.Enum):
    """The category of a DIMSE status, as PS3.7 Annex C groups them."""

    SUCCESS = "Success"
    WARNING = "Warning"
    FAILURE = "Failure"
    CANCEL = "Cancel"
    PENDING = "Pending"


# Statuses known by their exact code: code -> (category, meaning).
STATUS_CODES: dict[int, tuple[StatusCategory, str]] = {
    0x0000: (StatusCategory.SUCCESS, "Success"),
    0x0001: (StatusCategory.WARNING, "Requested optional attributes not supported"),
    0x0107: (StatusCategory.WARNING, "Attribute list error"),
    0x0116: (StatusCategory.WARNING, "Attribute value out of range"),
    0xB000: (StatusCategory.WARNING, "Coercion of data elements"),
    0xB006: (StatusCategory.WARNING, "Elements discarded"),
    0xB007: (StatusCategory.WARNING, "Data set does not match SOP class"),
    0x0105: (StatusCategory.FAILURE, "No such attribute"),
    0x0106: (StatusCategory.FAILURE, "Invalid attribute value"),
    0x0110: (StatusCategory.FAILURE, "Processing failure"),
    0x0111: (StatusCategory.FAILURE, "Duplicate SOP instance"),
    0x0112: (StatusCategory.FAILURE, "No such SOP instance"),
    0x0113: (StatusCategory.FAILURE, "No such event type"),
    0x0114: (StatusCategory.FAILURE, "No such argument"),
    0x0115: (StatusCategory.FAILURE, "Invalid argument value"),
    0x0117: (StatusCategory.FAILURE, "Invalid object instance"),
    0x0118: (StatusCategory.FAILURE, "No such SOP class"),
    0x0119: (StatusCategory.FAILURE, "Class-instance conflict"),
    0x0120: (StatusCategory.FAILURE, "Missing attribute"),
    0x0121: (StatusCategory.FAILURE, "Missing attribute value"),
    0x0122: (StatusCategory.FAILURE, "Refused: SOP class not supported"),
    0x0123: (StatusCategory.FAILURE, "No such action"),
    0x0124: (StatusCategory.FAILURE, "Refused: not authorised"),
    0x0210: (StatusCategory.FAILURE, "Duplicate invocation"),
    0x0211: (StatusCategory.FAILURE, "Unrecognised operation"),
    0x0212: (StatusCategory.FAILURE, "Mistyped argument"),
    0x0213: (StatusCategory.FAILURE, "Resource limitation"),
    0xFE00: (StatusCategory.CANCEL, "Cancel"),
    0xFF00: (StatusCategory.PENDING, "Pending"),
    0xFF01: (StatusCategory.PENDING, "Pending, optional keys not supported"),
}

# Statuses known by a range of codes: (first, last, category, meaning).
STATUS_RANGES: tuple[tuple[int, int, StatusCategory, str], ...] = (
    (0xA700, 0xA7FF, StatusCategory.FAILURE, "Refused: out of resources"),
    (0xA800, 0xA8FF, StatusCategory.FAILURE, "Refused: SOP class not supported"),
    (0xA900, 0xA9FF, StatusCategory.FAILURE,
     "Error: data set does not match SOP class"),
    (0xB000, 0xBFFF, StatusCategory.WARNING, "Warning"),
    (0xC000, 0xCFFF, StatusCategory.FAILURE, "Error: cannot understand"),
)

# Failure statuses worth sending the file again after a pause.
TRANSIENT_STATUS_RANGE = (0xA700, 0xA7FF)

UNKNOWN_STATUS_MEANING = "Unknown status"


def describe_status(status: int) -> tuple[StatusCategory, str]:
    """Return the category and meaning of a DIMSE status code.

    Parameters
    ----------
    status : int
        The (0000,0900) Status value of a response.

    Returns
    -------
    tuple[StatusCategory, str]
        The category and a short meaning; an unknown code is a failure with
        the meaning ``"Unknown status"``.
    """
    known = STATUS_CODES.get(status)
    if known is not None:
        return known
    for first, last, category, meaning in STATUS_RANGES:
        if first <= status <= last:
            return category, meaning
    return StatusCategory.FAILURE, UNKNOWN_STATUS_MEANING


def is_transient_status(status: int) -> bool:
    """Return True for 0xA7xx, "Refused: out of resources", which may clear up."""
    first, last = TRANSIENT_STATUS_RANGE
    return first <= status <= last


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The outcome of one C-STORE, as the receiver reported it.

    ``status`` is the (0000,0900) Status code, ``error_comment`` the optional
    (0000,0902) Error Comment and ``category`` the category of the code.
    """

    status: int
    error_comment: str | None
    category: StatusCategory

    @property
    def meaning(self) -> str:
        """The meaning of the status code in words."""
        return describe_status(self.status)[1]

    def __str__(self) -> str:
        text = f"{self.meaning} (0x{self.status:04X})"
        if self.error_comment:
            text += f": {self.error_comment}"
        return text
