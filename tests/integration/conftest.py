"""Fixtures of the end-to-end tests: receivers on loopback and the sample files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import CORPUS_DIR, load_receivers

receivers = load_receivers()

# Accept every transfer syntax and SOP class storescp knows, serve each
# association in its own process, give each received object its own file even
# when two share a SOP Instance UID, and write each data set as it arrived.
STORESCP_ACCEPT_ALL = ("+xa", "-pm", "--fork", "+uf", "+B")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Any]:
    """DCMTK storescp accepting everything, writing into ``tmp_path / "scp"``."""
    out_dir = tmp_path / "scp"
    out_dir.mkdir()
    with receivers.start_storescp(out_dir, *STORESCP_ACCEPT_ALL) as scp:
        yield scp


@pytest.fixture
def dicomsend_receiver(tmp_path: Path) -> Iterator[Any]:
    """The project's StorageReceiver on a free loopback port."""
    from engine.receiver import StorageReceiver

    receiver = StorageReceiver(tmp_path / "received", host="127.0.0.1", port=0)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real-file corpus; it must exist under CI, elsewhere it may be skipped."""
    if not CORPUS_DIR.is_dir():
        message = f"The corpus folder '{CORPUS_DIR}' does not exist"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CORPUS_DIR.resolve()
