"""The `contained` command's image subcommands: output, one-line errors, exit statuses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contained import cli

VENV_CONTAINED = Path(sys.executable).parent / "contained"


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_images_on_an_empty_store_prints_the_header(home, capsys):
    status, out, err = run(capsys, "images")
    assert status == 0 and err == ""
    assert out.split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE"]


def test_import_busybox_then_images_inspect_rmi(home, capsys):
    status, out, _ = run(capsys, "import", "busybox")
    assert status == 0 and out.startswith("busybox:latest sha256:")
    digest = out.split()[1]

    status, out, _ = run(capsys, "images")
    header, row = out.splitlines()
    assert row.split() == ["busybox", "latest", digest[:19], row.split()[3]]
    assert row.split()[3].endswith("MB")
    assert run(capsys, "images", "--no-trunc")[1].splitlines()[1].split()[2] == digest
    assert run(capsys, "images", "-q")[1] == "busybox:latest\n"

    status, out, _ = run(capsys, "inspect", "busybox")
    described = json.loads(out)
    assert described["name"] == "docker.io/library/busybox:latest"
    assert described["digest"] == digest
    assert described["config"]["Cmd"] == ["sh"]
    assert len(described["layers"]) == 1 and described["layers"][0]["diff_id"].startswith("sha256:")

    status, out, _ = run(capsys, "rmi", "busybox")
    assert (status, out) == (0, "Untagged: busybox:latest\n")
    assert len(run(capsys, "images")[1].splitlines()) == 1


def test_bad_reference_is_one_line_and_status_125(home, capsys):
    status, out, err = run(capsys, "inspect", "Busybox")
    assert status == 125 and out == ""
    assert err.startswith("contained: error: invalid reference 'Busybox'")
    assert err.count("\n") == 1


def test_missing_image_suggests_import(home, capsys):
    status, _, err = run(capsys, "inspect", "busybox")
    assert status == 125
    assert "contained import busybox" in err and err.count("\n") == 1
    status, _, err = run(capsys, "rmi", "alpine")
    assert status == 125 and "contained pull alpine:latest" in err


def test_import_tarball_needs_a_name(home, tmp_path, capsys):
    status, _, err = run(capsys, "import", str(tmp_path / "rootfs.tar"))
    assert status == 125 and "name the image" in err


def test_unpack_into_non_empty_directory_fails(home, tmp_path, capsys):
    run(capsys, "import", "busybox")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    status, _, err = run(capsys, "unpack", "busybox", str(tmp_path / "full"))
    assert status == 125 and "not an empty directory" in err


def test_pull_through_the_local_registry(home, registry, capsys):
    status, out, err = run(capsys, "pull", "-q", "busybox", "--registries-conf",
                           str(registry.registries_conf))
    assert status == 0, err
    assert out.startswith("busybox:latest sha256:")


def test_pull_of_missing_image_is_one_line(home, registry, capsys):
    status, _, err = run(capsys, "pull", f"{registry.address}/library/busybox:nope")
    assert status == 125
    assert err.count("\n") == 1
    assert "has no such image; try `contained import busybox`" in err


def test_registry_status_when_stopped(home, capsys):
    status, out, _ = run(capsys, "registry", "status")
    assert status == 1 and "contained registry start" in out
    assert run(capsys, "registry", "stop")[1] == "registry was not running\n"


def test_usage_errors_exit_2(home, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        cli.main(["pull", "busybox", "--tls-verify=maybe"])
    assert caught.value.code == 2


def test_ctrl_c_exits_130(home, capsys, monkeypatch):
    def add_interrupted(commands):
        parser = commands.add_parser("interrupted")
        parser.set_defaults(func=lambda args: (_ for _ in ()).throw(KeyboardInterrupt))

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, add_interrupted])
    status, _, err = run(capsys, "interrupted")
    assert status == 130 and err == "contained: interrupted\n"


def test_new_commands_register_with_one_function():
    names = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert {"pull", "images", "inspect", "rmi", "unpack", "import", "registry"} <= names


def test_console_script_and_python_m(home):
    env = {"CONTAINED_HOME": str(home), "PATH": "/usr/bin:/bin"}
    for argv in ([str(VENV_CONTAINED)], [sys.executable, "-m", "contained"]):
        result = subprocess.run([*argv, "inspect", "busybox"], capture_output=True, text=True,
                                env=env, timeout=30)
        assert result.returncode == 125
        assert result.stderr.startswith("contained: error: no image busybox:latest")


def test_human_size_uses_decimal_units_like_docker():
    assert cli.human_size(512) == "512B"
    assert cli.human_size(4_260_000) == "4.26MB"
    assert cli.human_size(1_037_006) == "1.04MB"
