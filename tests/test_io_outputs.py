"""Output folders (jaxmed.io.outputs): refused when not empty, named entries replaced only under force."""

import os

import pytest

from jaxmed.io import load_average, prepare_out_dir


def test_missing_and_empty_folders_are_taken(tmp_path):
    out = prepare_out_dir(tmp_path / "a" / "b", force=False)
    assert out.is_dir() and not any(out.iterdir())
    assert prepare_out_dir(out, force=False) == out


def test_a_non_empty_folder_is_refused_by_name(tmp_path):
    for name in ("notes.txt", "z.csv", "b", "c", "d", "e"):
        (tmp_path / name).write_text("mine")
    with pytest.raises(FileExistsError, match=r"not empty \(b, c, d, e, notes.txt, \.\.\.\).*--force"):
        prepare_out_dir(tmp_path, force=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_force_removes_only_the_named_entries(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoint" / "sub").mkdir(parents=True)
    (tmp_path / "checkpoint" / "sub" / "x").write_text("old")
    (tmp_path / "model.json").write_text("old")
    prepare_out_dir(tmp_path, force=True, replace=("checkpoint", "model.json", "absent"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        prepare_out_dir(tmp_path / "f", force=True)


def test_load_average_is_the_os_figure():
    expected = [round(x, 2) for x in os.getloadavg()]
    got = load_average()
    assert len(got) == 3 and all(abs(a - b) <= 0.5 for a, b in zip(got, expected))
