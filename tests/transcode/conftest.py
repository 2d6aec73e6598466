"""Fixtures for the transcode tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "real"
CORPUS_FOUND = (CORPUS / "MANIFEST.tsv").is_file()

# These modules build their cases from the real-file corpus beside the
# repository. Without it they are left out, except under CI, where they must
# run and fail loudly.
if not CORPUS_FOUND and os.environ.get("CI") != "true":
    collect_ignore = ["test_dcmtk.py", "test_lossy.py", "test_matrix.py",
                      "test_transcoder.py"]


def pytest_report_header() -> str | None:
    if CORPUS_FOUND:
        return None
    return (f"corpus not found at {CORPUS}: the transcode tests that need it "
            "were not collected")


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
