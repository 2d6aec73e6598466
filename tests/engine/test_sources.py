"""Unit tests of engine.sources: paths, directory walks and bytes in memory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest

from engine.sources import (
    Source,
    SkippedFile,
    source_from_memory,
    source_from_path,
    sources_from_directory,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def make_tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(TEST_FILES / "CT_small.dcm", root / "a" / "b" / "IMG1")
    shutil.copy(TEST_FILES / "rtstruct.dcm", root / "a" / "raw_no_meta")
    shutil.copy(TEST_FILES / "MR_small.dcm", root / "z.dcm")
    shutil.copy(TEST_FILES / "dicomdirtests" / "DICOMDIR", root / "DICOMDIR")
    (root / "notes.txt").write_text("clutter")
    (root / "empty").write_bytes(b"")
    return root


def test_directory_walk(tmp_path: Path) -> None:
    found = list(sources_from_directory(make_tree(tmp_path)))
    sources = [item for item in found if isinstance(item, Source)]
    skipped = [item for item in found if isinstance(item, SkippedFile)]
    assert sorted(Path(s.name).name for s in sources) == ["IMG1", "raw_no_meta",
                                                          "z.dcm"]
    assert all(s.header is not None and s.error is None for s in sources)
    assert sorted(Path(s.path).name for s in skipped) == ["DICOMDIR", "empty",
                                                          "notes.txt"]
    dicomdir = next(s for s in skipped if s.path.endswith("DICOMDIR"))
    assert "DICOMDIR" in dicomdir.reason


def test_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="as the directory does not exist"):
        list(sources_from_directory(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="use add_file"):
        list(sources_from_directory(tmp_path / "file"))


def test_broken_symlink_skipped(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    found = list(sources_from_directory(tmp_path))
    assert found == [SkippedFile(str(tmp_path / "link"), "broken symbolic link")]


def test_named_non_dicom_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    source = source_from_path(path)
    assert isinstance(source, Source)
    assert source.header is None
    assert source.error is not None
    assert str(path) in source.error


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="as the file does not exist"):
        source_from_path(tmp_path / "missing.dcm")
    with pytest.raises(IsADirectoryError, match="use add_directory"):
        source_from_path(tmp_path)


def test_memory_source() -> None:
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    source = source_from_memory(data, "in-memory")
    assert isinstance(source, Source)
    assert source.name == "in-memory"
    assert source.path is None
    assert source.data == data
    assert source.size == len(data)
    assert source.header is not None


def test_memory_source_not_bytes() -> None:
    with pytest.raises(TypeError, match="expected bytes, got str"):
        source_from_memory("text", "name")  # type: ignore[arg-type]


def test_memory_source_not_dicom() -> None:
    source = source_from_memory(b"nonsense bytes here", "junk")
    assert isinstance(source, Source)
    assert source.header is None
    assert "'junk'" in (source.error or "")


def test_fifo_in_directory_is_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.dcm")

    found = list(sources_from_directory(tmp_path))

    assert len(found) == 1
    assert isinstance(found[0], SkippedFile)
    assert found[0].reason == "not a regular file (a pipe, socket or device)"


def test_fifo_named_is_rejected(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)

    with pytest.raises(ValueError, match="pipe.dcm' as it is not a regular file"):
        source_from_path(fifo)
