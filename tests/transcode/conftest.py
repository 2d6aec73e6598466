"""Fixtures for the transcode tests."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture
def dcmtk_tools() -> dict[str, str]:
    """Paths of the DCMTK decoders; fails under CI=true when DCMTK is missing."""
    names = ("dcmdjpeg", "dcmdrle", "dcmdjpls", "dcmdump")
    tools = {name: f"/usr/bin/{name}" for name in names}
    missing = [path for path in tools.values() if not shutil.which(path)]
    if missing:
        message = f"DCMTK is not installed: {', '.join(missing)} not found"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return tools
