"""Unit tests of engine.options: address parsing and option validation."""

from __future__ import annotations

import pytest

from engine.options import (
    Address,
    parse_address,
    validate_ae_title,
    validate_count,
    validate_max_pdu_length,
    validate_timeout,
)


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:11112", "127.0.0.1", 11112),
    ("localhost", "localhost", 104),
    ("pacs.example.org:4242", "pacs.example.org", 4242),
    ("[::1]:11112", "::1", 11112),
    ("[::1]", "::1", 104),
    ("::1", "::1", 104),
    ("  127.0.0.1:1  ", "127.0.0.1", 1),
    ("127.0.0.1:65535", "127.0.0.1", 65535),
])
def test_parse_address_valid(text: str, host: str, port: int) -> None:
    assert parse_address(text) == Address(host, port)


@pytest.mark.parametrize(("text", "message"), [
    ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
    ("127.0.0.1:65536", "the port must be a number from 1 to 65535"),
    ("127.0.0.1:-1", "the port must be a number from 1 to 65535"),
    ("127.0.0.1:", "the port must be a number from 1 to 65535"),
    (":104", "the host is missing"),
    ("[::1]x", "expected ':port' after the closing bracket"),
    ("[nonsense]:104", "'nonsense' is not an IPv6 address"),
    ("[]:104", "an IPv6 address needs the form"),
    ("", "expected 'host:port', 'host' or"),
])
def test_parse_address_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"Invalid addr {text!r}: .*{message}"
                       .replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        parse_address(text)


def test_parse_address_not_string() -> None:
    with pytest.raises(ValueError, match="Invalid addr 104"):
        parse_address(104)


def test_address_str() -> None:
    assert str(Address("::1", 104)) == "[::1]:104"
    assert str(Address("127.0.0.1", 104)) == "127.0.0.1:104"


def test_ae_title_trailing_spaces_removed() -> None:
    assert validate_ae_title("calling_ae_title", "PACS  ") == "PACS"
    assert validate_ae_title("calling_ae_title", "A" * 16) == "A" * 16


@pytest.mark.parametrize(("value", "message"), [
    ("", "must not be empty or all spaces"),
    ("   ", "must not be empty or all spaces"),
    ("A" * 17, "at most 16 characters, this one has 17"),
    ("A\\B", "printable ASCII characters other than backslash"),
    ("A\nB", "printable ASCII characters other than backslash"),
    ("ÄE", "printable ASCII characters other than backslash"),
    (None, "expected a string of 1 to 16 characters"),
])
def test_ae_title_invalid(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid called_ae_title .*{message}"):
        validate_ae_title("called_ae_title", value)


@pytest.mark.parametrize("value", [4096, 16384, 131072])
def test_max_pdu_length_valid(value: int) -> None:
    assert validate_max_pdu_length(value) == value


@pytest.mark.parametrize("value", [4095, 131073, 0, 1.5, "16384", True])
def test_max_pdu_length_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="Invalid max_pdu_length .*4096 to 131072"):
        validate_max_pdu_length(value)


def test_count_limits() -> None:
    assert validate_count("concurrency", 1) == 1
    assert validate_count("concurrency", 256) == 256
    with pytest.raises(ValueError, match="Invalid concurrency 257: allowed values"):
        validate_count("concurrency", 257)
    with pytest.raises(ValueError, match="Invalid concurrency 2.0: expected a whole"):
        validate_count("concurrency", 2.0)


def test_timeout_values() -> None:
    assert validate_timeout("dimse_timeout", None) is None
    assert validate_timeout("dimse_timeout", 5) == 5.0
    with pytest.raises(ValueError,
                       match="Invalid dimse_timeout 0: expected a finite number"):
        validate_timeout("dimse_timeout", 0)
    with pytest.raises(ValueError,
                       match="Invalid dimse_timeout nan: expected a finite number"):
        validate_timeout("dimse_timeout", float("nan"))
