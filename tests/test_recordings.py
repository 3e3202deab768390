"""Recorded root-run output (contained/workbook/recordings.py): what a cell that truly needs
root shows an unprivileged student, labelled as recorded."""

import json
import re

import nbformat

from contained import workbook
from contained.workbook import lab, recordings


def _executed_notebook(path):
    book = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('if workbook.needs_root("x", "echo hi", recorded="99-01"):\n'
                                     '    print("ran")')
    cell.id = "99-01"
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran as root\n")]
    book.cells.append(cell)
    nbformat.write(book, path)
    return path


def test_a_root_run_is_recorded_and_shown_labelled(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recordings, "RECORDINGS_DIR", tmp_path / "recorded")
    saved = recordings.record(_executed_notebook(tmp_path / "99-x.ipynb"))
    assert saved == tmp_path / "recorded" / "99.json"
    assert json.loads(saved.read_text())["cells"]["99-01"]["text"] == "ran as root\n"
    monkeypatch.setattr(lab, "privileged", lambda: False)
    assert not workbook.needs_root("making a cgroup", "mkdir /sys/fs/cgroup/x", recorded="99-01")
    shown = capsys.readouterr().out
    assert "Not run here (making a cgroup)" in shown and "mkdir /sys/fs/cgroup/x" in shown
    assert "Recorded from a root run" in shown and "ran as root" in shown


def test_a_missing_recording_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recordings, "RECORDINGS_DIR", tmp_path)
    recordings.show("98-01")
    assert "no recording of cell 98-01" in capsys.readouterr().out


def test_every_recorded_cell_of_the_workbook_has_its_recording():
    """A notebook cell that asks for a recording (recorded="ID") finds one in
    notebooks/recorded/: re-record with `python -m contained.workbook.recordings` after a
    root run when a cell changes."""
    wanted = []
    for path in workbook.notebooks():
        for cell in nbformat.read(path, as_version=4).cells:
            for found in re.finditer(r"""recorded\s*=\s*["']([\w.-]+)["']""", cell.source):
                assert found.group(1).startswith(path.name[:3]), f"{path.name}: {found.group(1)}"
                wanted.append(found.group(1))
    assert wanted
    for cell_id in wanted:
        cells = json.loads(recordings.path_for(cell_id).read_text())["cells"]
        assert cells[cell_id]["text"].strip(), cell_id
