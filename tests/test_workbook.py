"""The workbook's helpers (contained/workbook/) outside a notebook: the commands they start and
the directories they agree to clean. The notebooks themselves run in tests/notebooks/."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_root

from contained import views, workbook

PLANTED_NAMES = ("shlex.py", "json.py", "argparse.py")


def plant_modules(directory: Path, marker: Path) -> None:
    """Modules that, if imported, leave `marker` behind: what a container could write through
    `-v $PWD:/work` into the directory a notebook runs in."""
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in PLANTED_NAMES:
        (directory / name).write_text(code)
    package = directory / "contained"
    package.mkdir()
    (package / "__init__.py").write_text(code)
    (package / "__main__.py").write_text(code)


def test_contained_ignores_modules_planted_in_the_working_directory(tmp_path, monkeypatch,
                                                                     home, capsys):
    planted, elsewhere = tmp_path / "cwd", tmp_path / "pythonpath"
    planted.mkdir()
    elsewhere.mkdir()
    marker = tmp_path / "IMPORTED"
    plant_modules(planted, marker)
    plant_modules(elsewhere, marker)
    monkeypatch.chdir(planted)
    monkeypatch.setenv("PYTHONPATH", str(elsewhere))
    workbook.contained("images", check=False)
    assert not marker.exists(), f"planted modules were imported: {marker.read_text()}"
    assert "REPOSITORY" in capsys.readouterr().out  # and the real command did run


def test_helpers_start_python_isolated():
    """Every Python the package starts ignores its caller's directory and PYTHON* variables."""
    from contained import isolated
    from contained.jupyter import kernelspec

    assert kernelspec.kernel_json()["argv"][:2] == [sys.executable, "-I"]
    assert isolated.python_argv("contained.cli")[:3] == [sys.executable, "-I", "-c"]


def test_isolated_helpers_start_where_contained_is_only_on_pythonpath(tmp_path):
    """A system Python that finds contained through PYTHONPATH (as the unprivileged workbook
    run does) still starts its helpers: they append contained's own directory."""
    system = "/usr/bin/python3"
    if not Path(system).exists():
        pytest.skip("needs /usr/bin/python3")
    repo = Path(workbook.__file__).resolve().parents[2]
    code = ("import subprocess, sys\n"
            "from contained import isolated\n"
            "argv = isolated.python_argv('contained.cli') + ['--help']\n"
            "sys.exit(subprocess.run(argv, capture_output=True).returncode)")
    done = subprocess.run([system, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0, done.stderr


def test_tables_print_control_characters_escaped():
    table = workbook.Table(["path"], [["evil\x1b]0;pwned\x07"]])
    assert str(table).splitlines()[1] == "evil\\x1b]0;pwned\\x07"
    # In a notebook too, and there the doctor's long advice wraps (listings do not).
    html = table._repr_html_()
    assert "\x1b" not in html and "evil\\x1b]0;pwned\\x07" in html
    assert "nowrap" not in html and "nowrap" in views.Table(["a"], [["b"]])._repr_html_()


def test_out_dir_must_be_new_empty_or_made_by_the_workbook(tmp_path):
    made = workbook.claim_out_dir(tmp_path / "new")
    assert (made / workbook.LAB_MARKER).is_file()
    assert workbook.claim_out_dir(made) == made  # its own, again
    (made / "lab-03").mkdir()
    assert workbook.claim_out_dir(made) == made
    for foreign in ("/", "/tmp", str(tmp_path)):
        with pytest.raises(workbook.NotALabDirectory, match="not made by the workbook"):
            workbook.claim_out_dir(foreign)


@needs_root
def test_executing_into_a_foreign_directory_unmounts_nothing(tmp_path, capsys):
    """`python -m contained.workbook DIR` used to unmount everything under DIR (with `/`,
    every mount of the host) after running a notebook."""
    import nbformat

    notebook = tmp_path / "00-empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), notebook)
    foreign = tmp_path / "data"
    (foreign / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "kept", str(foreign / "mnt")], check=True)
    try:
        assert workbook.main([str(foreign), str(notebook)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not made by the workbook" in err
        assert os.path.ismount(foreign / "mnt")
    finally:
        subprocess.run(["umount", str(foreign / "mnt")], check=False)
