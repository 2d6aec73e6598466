"""Validation of the StoreScu options and parsing of the receiver address.

Every check raises ``ValueError`` naming the option, the value and what is
allowed, so a bad option fails when the object is built, not mid-batch.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field

from engine.tls import TlsSettings

DEFAULT_PORT = 104
DEFAULT_CALLING_AE_TITLE = "STORE-SCU"
DEFAULT_CALLED_AE_TITLE = "ANY-SCP"
DEFAULT_MAX_PDU_LENGTH = 16384
MIN_MAX_PDU_LENGTH = 4096
MAX_MAX_PDU_LENGTH = 131072
MAX_AE_TITLE_LENGTH = 16


@dataclass(frozen=True, slots=True)
class Address:
    """A receiver's host and TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts of one association, in seconds; None waits forever.

    ``connect`` bounds the TCP connect, ``acse`` the wait for the
    A-ASSOCIATE-AC and A-RELEASE-RP, ``dimse`` the wait for each C-STORE-RSP
    and ``network`` any single socket read or write.
    """

    connect: float | None = 30.0
    acse: float | None = 30.0
    dimse: float | None = 60.0
    network: float | None = 60.0


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Every validated option of one StoreScu, as the pipeline needs them."""

    address: Address
    calling_ae_title: str = DEFAULT_CALLING_AE_TITLE
    called_ae_title: str = DEFAULT_CALLED_AE_TITLE
    max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH
    transfer_syntax: str | None = None
    concurrency: int = 1
    transcode_workers: int = 1
    verbose: bool = False
    allow_lossy: bool = False
    verify: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    start_method: str | None = None
    tls: TlsSettings | None = None
    # A Dask scheduler, as tcp://host:port, that runs the transcode stage.
    scheduler: str | None = None


def parse_address(addr: object) -> Address:
    """Parse ``host:port``, ``host`` or ``[ipv6]:port``; a missing port means 104."""
    if not isinstance(addr, str) or not addr.strip():
        raise ValueError(
            f"Invalid addr {addr!r}: expected 'host:port', 'host' or '[ipv6]:port'"
        )
    text = addr.strip()

    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(
                f"Invalid addr {addr!r}: an IPv6 address needs the form '[ipv6]:port'"
            )
        _check_ipv6(addr, host)
        if rest and not rest.startswith(":"):
            raise ValueError(
                f"Invalid addr {addr!r}: expected ':port' after the closing bracket"
            )
        port_text = rest[1:] if rest else ""
        port_given = bool(rest)
    elif text.count(":") > 1:
        # A bare IPv6 address such as ::1 has no room for a port.
        _check_ipv6(addr, text)
        host, port_text, port_given = text, "", False
    else:
        host, separator, port_text = text.partition(":")
        if not host:
            raise ValueError(f"Invalid addr {addr!r}: the host is missing")
        port_given = bool(separator)

    port = _parse_port(addr, port_text, port_given)
    return Address(host, port)


def _check_ipv6(addr: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(
            f"Invalid addr {addr!r}: {host!r} is not an IPv6 address"
        ) from None


def _parse_port(addr: str, port_text: str, port_given: bool) -> int:
    if not port_given:
        return DEFAULT_PORT
    if not port_text.isdigit():
        raise ValueError(
            f"Invalid addr {addr!r}: the port must be a number from 1 to 65535"
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(
            f"Invalid addr {addr!r}: the port must be a number from 1 to 65535"
        )
    return port


def validate_ae_title(option: str, value: object) -> str:
    """Return the AE title with trailing spaces removed, or raise ValueError."""
    if not isinstance(value, str):
        raise ValueError(
            f"Invalid {option} {value!r}: expected a string of 1 to 16 characters"
        )
    if not value.strip(" "):
        raise ValueError(
            f"Invalid {option} {value!r}: an AE title must not be empty or all spaces"
        )
    if len(value) > MAX_AE_TITLE_LENGTH:
        raise ValueError(
            f"Invalid {option} {value!r}: an AE title has at most 16 characters, "
            f"this one has {len(value)}"
        )
    if "\\" in value or any(ord(char) < 32 or ord(char) > 126 for char in value):
        raise ValueError(
            f"Invalid {option} {value!r}: an AE title may contain only printable "
            "ASCII characters other than backslash"
        )
    return value.strip(" ")


def validate_max_pdu_length(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"Invalid max_pdu_length {value!r}: expected a whole number of bytes "
            f"from {MIN_MAX_PDU_LENGTH} to {MAX_MAX_PDU_LENGTH}"
        )
    if not MIN_MAX_PDU_LENGTH <= value <= MAX_MAX_PDU_LENGTH:
        raise ValueError(
            f"Invalid max_pdu_length {value}: allowed values are "
            f"{MIN_MAX_PDU_LENGTH} to {MAX_MAX_PDU_LENGTH} bytes"
        )
    return value


def validate_count(option: str, value: object, maximum: int = 256) -> int:
    """Check a process count such as ``concurrency``: a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"Invalid {option} {value!r}: expected a whole number from 1 to {maximum}"
        )
    if not 1 <= value <= maximum:
        raise ValueError(
            f"Invalid {option} {value}: allowed values are 1 to {maximum}"
        )
    return value


def validate_timeout(option: str, value: object) -> float | None:
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(
            f"Invalid {option} {value!r}: expected a finite number of seconds "
            "above 0, or None to wait forever"
        )
    return float(value)


def default_transcode_workers() -> int:
    return os.cpu_count() or 1
