"""``dicomsend convert``: mirrored output, equal pixels, nothing overwritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from engine.cli import main
from engine.convert import convert_files

SAMPLES = ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm")


def _input_tree(root: Path) -> Path:
    """Copy a few pydicom samples into ``root/in/a`` and ``root/in/b``."""
    source = root / "in"
    for index, name in enumerate(SAMPLES):
        folder = source / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(get_testdata_file(name, download=False), folder / name)
    (source / "notes.txt").write_text("not DICOM")
    return source


def test_convert_mirrors_tree_with_equal_pixels(tmp_path: Path) -> None:
    source = _input_tree(tmp_path)
    out_dir = tmp_path / "out"

    result = convert_files([str(source)], str(out_dir), "RLELossless", workers=2)

    assert result.converted == 4
    assert result.failed == 0
    assert result.skipped == 1
    for original in source.rglob("*.dcm"):
        converted = out_dir / "in" / original.relative_to(source)
        before = pydicom.dcmread(original)
        after = pydicom.dcmread(converted)
        assert after.SOPInstanceUID == before.SOPInstanceUID
        if "PixelData" in before:
            assert after.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
            assert np.array_equal(after.pixel_array, before.pixel_array)
        else:
            assert after.file_meta.TransferSyntaxUID == (
                pydicom.uid.ExplicitVRLittleEndian
            )


def test_convert_never_overwrites(tmp_path: Path) -> None:
    source = _input_tree(tmp_path)
    out_dir = tmp_path / "out"
    convert_files([str(source)], str(out_dir), "ExplicitVRLittleEndian", workers=1)
    written = {path: path.read_bytes() for path in out_dir.rglob("*.dcm")}

    again = convert_files([str(source)], str(out_dir), "RLELossless", workers=1)

    assert again.converted == 0
    assert again.failed == 4
    assert all("exists already; nothing was overwritten" in failure.error
               for failure in again.failures)
    assert {path: path.read_bytes() for path in out_dir.rglob("*.dcm")} == written


def test_convert_refuses_to_write_over_input(tmp_path: Path) -> None:
    source = _input_tree(tmp_path)
    original = (source / "b" / "CT_small.dcm").read_bytes()

    result = convert_files([str(source / "b" / "CT_small.dcm")], str(source / "b"),
                           "RLELossless", workers=1)

    assert result.converted == 0
    assert "would overwrite an input" in result.failures[0].error
    assert (source / "b" / "CT_small.dcm").read_bytes() == original


def test_convert_cli_exit_codes(tmp_path: Path) -> None:
    source = _input_tree(tmp_path)
    runner = CliRunner()

    first = runner.invoke(main, ["convert", str(source), "--out",
                                 str(tmp_path / "out"), "-t", "JPEGLSLossless",
                                 "-w", "1"])
    second = runner.invoke(main, ["convert", str(source), "--out",
                                  str(tmp_path / "out"), "-t", "JPEGLSLossless",
                                  "-w", "1"])
    unknown = runner.invoke(main, ["convert", str(source), "--out",
                                   str(tmp_path / "x"), "-t", "NoSuchSyntax"])

    assert first.exit_code == 0, first.output
    assert "Converted 4 files, 0 failed, 1 skipped" in first.output
    assert second.exit_code == 1
    assert unknown.exit_code == 2
