"""The `contained` command's image subcommands: output, one-line errors, exit statuses."""

import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_root

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


TITLE_ESCAPE = "\x1b]0;pwned\x07"  # sets the terminal's window title


def test_tables_print_control_characters_escaped():
    table = cli.format_table([("A", "B"), (f"sh {TITLE_ESCAPE}\x1b[2K", "tab\there")])
    assert not any(ord(c) < 32 and c != "\n" for c in table), repr(table)
    assert "sh \\x1b]0;pwned\\x07\\x1b[2K" in table and "tab\\there" in table


@needs_root
def test_ps_shows_an_image_command_s_escapes_quoted(busybox_store, capsys):
    name = "escapes"
    status, _, err = run(capsys, "run", "-d", "--name", name, "busybox", "sh", "-c",
                         f"sleep 30 # {TITLE_ESCAPE}")
    assert status == 0, err
    try:
        status, out, _ = run(capsys, "ps", "--no-trunc")
        assert status == 0
        assert "\x1b" not in out and "\x07" not in out
        assert "\\x1b]0;pwned\\x07" in out
    finally:
        run(capsys, "rm", "-f", name)


# --- one line for each failure (issue 10), and what a shared machine needs to see ------------

def test_import_of_a_directory_with_an_invalid_index_is_one_line(home, tmp_path, capsys):
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for index in ("{not json", '{"schemaVersion":2,"manifests":[1]}',
                  '{"schemaVersion":2,"manifests":[{"annotations":"x"},{}]}'):
        (layout / "index.json").write_text(index)
        for argv in (("import", str(layout), "x:1"), ("pull", f"oci:{layout}")):
            status, out, err = run(capsys, *argv)
            assert status == 125 and out == "", (argv, index)
            assert err.startswith("contained: error: ") and err.count("\n") == 1, (argv, err)
    status, _, err = run(capsys, "import", str(layout), "x:1")
    assert "contained pull oci:" in err


def _corrupt_images(home: Path) -> None:
    """busybox stays whole; `broken:config` loses its config blob; `broken:manifest` points at
    a manifest that is not there."""
    import tarfile
    from io import BytesIO

    from contained.images import oci
    from contained.images.store import Store

    store = Store(home)
    data = BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        member = tarfile.TarInfo("hello")
        member.size = 2
        tar.addfile(member, BytesIO(b"hi"))
    broken = store.add_image([data.getvalue()], "broken:config")
    oci.blob_path(store.layout, broken.config_digest).unlink()
    index = json.loads((store.layout / "index.json").read_text())
    index["manifests"].append({"mediaType": oci.MEDIA_TYPE_MANIFEST,
                               "digest": "sha256:" + "0" * 64, "size": 100,
                               "annotations": {"org.opencontainers.image.ref.name":
                                               "docker.io/library/broken:manifest"}})
    (store.layout / "index.json").write_text(json.dumps(index))


def test_a_corrupt_image_is_listed_as_broken_and_the_others_normally(home, capsys):
    run(capsys, "import", "busybox")
    _corrupt_images(home)
    status, out, err = run(capsys, "images")
    assert status == 0, err
    rows = {line.split()[0] + ":" + line.split()[1]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"busybox:latest", "broken:config", "broken:manifest"}
    assert rows["busybox:latest"].endswith("MB")
    assert "broken" in rows["broken:config"].split()[2:]
    assert "broken" in rows["broken:manifest"].split()[2:]
    assert err.count("\n") == 2 and "contained rmi" in err
    assert run(capsys, "images", "-q")[1].split() == ["broken:config", "broken:manifest",
                                                      "busybox:latest"]
    assert run(capsys, "rmi", "broken:config", "broken:manifest")[0] == 0


def test_an_empty_name_is_refused_in_one_line(home, capsys):
    run(capsys, "import", "busybox")
    for argv in (("run", "--dry-run", "--name", "", "busybox", "true"),
                 ("run", "--rm", "--name", "", "busybox", "true")):
        status, out, err = run(capsys, *argv)
        assert status == 125 and out == ""
        assert err.startswith("contained: error: empty container name") and err.count("\n") == 1


def test_chroot_says_in_one_line_that_the_container_is_escapable(home, capsys):
    run(capsys, "import", "busybox")
    status, out, err = run(capsys, "run", "--dry-run", "--chroot", "busybox", "true")
    assert status == 0 and "chroot" in out
    assert err.count("\n") == 1 and err.startswith("contained: warning: --chroot")
    assert "escap" in err and "pivot_root" in err
    status, out, err = run(capsys, "run", "--dry-run", "busybox", "true")
    assert err == ""


def test_doctor_says_where_the_store_lives_and_how_full_it_is(home, capsys):
    status, out, _ = run(capsys, "doctor")
    (line,) = [line for line in out.splitlines() if "] image store:" in line]
    assert str(home) in line and "% used" in line and "free" in line


def test_ps_size_shows_each_containers_writable_layer_without_following_links(busybox_store,
                                                                             capsys):
    from conftest import IS_ROOT

    if not IS_ROOT:
        pytest.skip("needs root: runs a container")
    name = "sized"
    # 3 MB written, a symlink to the whole host and a hard link that must count once.
    status, _, err = run(capsys, "run", "-d", "--name", name, "busybox", "sh", "-c",
                         "head -c 3000000 /dev/urandom > /big; ln /big /big2; ln -s / /host; "
                         "touch /done; sleep 30")
    assert status == 0, err
    try:
        from contained.runtime import container

        upper = Path(container.get(name).spec.directory) / "upper"
        for _ in range(200):
            if (upper / "done").exists():
                break
            time.sleep(0.05)
        status, out, _ = run(capsys, "ps", "--size")
        assert status == 0
        header, row = out.splitlines()
        assert header.split()[-1] == "SIZE" and "NAMES" in header
        assert row.split()[-2] == name
        assert row.split()[-1] in ("3MB", "3.01MB", "3.02MB"), row
        status, out, _ = run(capsys, "ps")
        assert "SIZE" not in out
    finally:
        run(capsys, "rm", "-f", name)


def test_run_detached_on_a_full_home_is_one_line_and_status_125(tmp_path):
    """A tiny tmpfs home, filled up, in a mount namespace of the test's own: the state file
    cannot be written (ENOSPC)."""
    from conftest import IS_ROOT

    if not IS_ROOT:
        pytest.skip("needs root: mounts a tmpfs")
    full = tmp_path / "full"
    full.mkdir()
    script = (f"mount -t tmpfs -o size=12m tmpfs {full} && "
              f"{VENV_CONTAINED} import busybox >/dev/null && "
              # unpacks the layer, which a run would do first
              f"{VENV_CONTAINED} run --dry-run busybox true >/dev/null && "
              f"(head -c 100000000 /dev/zero > {full}/filler 2>/dev/null; true) && "
              f"{VENV_CONTAINED} run -d --name X busybox sleep 30")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          env={**os.environ, "CONTAINED_HOME": str(full)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("contained: error: ") and done.stderr.count("\n") == 1, \
        done.stderr
    assert "No space left on device" in done.stderr or "no space" in done.stderr.lower()


def test_install_kernel_help_names_the_magic_with_two_percent_signs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["install-kernel", "--help"])
    out = capsys.readouterr().out
    assert "(%%container works without %load_ext)" in out and "%%%" not in out


def test_run_takes_docker_s_combined_and_long_spellings(capsys):
    run_parser = cli.build_parser()._subparsers._group_actions[0].choices["run"]
    args = run_parser.parse_args(["--rm", "--network", "none", "-it", "--pids-limit", "20",
                                  "busybox", "sh", "-c", "true"])
    assert (args.rm, args.net, args.interactive, args.tty, args.pids_limit) == \
        (True, "none", True, True, 20)
    assert args.command == ["sh", "-c", "true"]


def test_a_command_line_builds_only_its_own_command_s_parser():
    every = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert every == set(cli.ADDED_BY)
    for name in every:
        alone = set(cli.build_parser([name, "x"])._subparsers._group_actions[0].choices)
        assert name in alone and len(alone) <= 3, (name, alone)
    for argv in (["--help"], ["nope"], []):
        assert set(cli.build_parser(argv)._subparsers._group_actions[0].choices) == every


def test_the_console_script_exits_at_once_only_when_nothing_waits_for_the_exit():
    def waiting():
        pass

    atexit.register(waiting)
    try:
        assert cli._exit_now(0) is None  # returned: the normal exit runs the handler
    finally:
        atexit.unregister(waiting)


def test_a_console_script_whose_reader_left_exits_1_without_a_traceback(home):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([str(VENV_CONTAINED), "images"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=30,
                              env={**os.environ, "CONTAINED_HOME": str(home)})
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")


def test_the_console_script_flushes_what_it_printed_before_it_exits(home):
    done = subprocess.run([str(VENV_CONTAINED), "images"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "CONTAINED_HOME": str(home)})
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE"]
