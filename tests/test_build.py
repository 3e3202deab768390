"""`contained build`, `commit` and `push` end to end: real containers, real skopeo and umoci.

Root only (every RUN is a container). Each test builds from busybox (imported offline) in the
module's temporary CONTAINED_HOME.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import needs_root, remove_cgroup_tree

from contained.build import builder as containerbuild
from contained.build import commit
from contained.build.builder import BuildFailed, BuildOptions
from contained.images import push
from contained.images.containerfile import ContainerfileError
from contained.images.store import Store
from contained.runtime import container

pytestmark = needs_root

DELETING = """\
FROM busybox
RUN mkdir -p /data/keep /data/old && echo a > /data/keep/a && echo b > /data/gone \\
    && echo c > /data/old/c
RUN rm /data/gone && rm -rf /data/old && mkdir /data/old && echo d > /data/old/d
CMD ["sh", "-c", "ls /data /data/old; test ! -e /data/gone && test ! -e /data/old/c && echo ok"]
"""


def write_context(path: Path, containerfile: str, files: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Containerfile").write_text(containerfile)
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def build(context: Path, tag: str, log: list | None = None, **options):
    read, write = os.pipe()
    try:
        image = containerbuild.build(BuildOptions(tag=tag, context=context, output=write,
                                                  **options))
    finally:
        os.close(write)
        with os.fdopen(read) as out:
            text = out.read()
        if log is not None:
            log.append(text)
    return image


def run_output(image: str, command: list[str] | None = None) -> tuple[int, str]:
    read, write = os.pipe()
    try:
        with open(os.devnull) as null:
            result = container.run(image, command, stdin=null, stdout=write, stderr=write)
    finally:
        os.close(write)
    with os.fdopen(read) as out:
        return result.status, out.read()


def test_a_file_deleted_in_run_stays_deleted_in_the_built_image(busybox_home, tmp_path):
    build(write_context(tmp_path / "ctx", DELETING), "deleting:1")
    status, output = run_output("deleting:1")
    assert status == 0, output
    assert output.split() == ["/data:", "keep", "old", "/data/old:", "d", "ok"]


def test_built_image_passes_skopeo_inspect_and_umoci_unpack(busybox_home, tmp_path):
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        pytest.skip("needs skopeo and umoci (apt-get install skopeo umoci)")
    image = build(write_context(tmp_path / "ctx", DELETING), "checked:1")
    layout = Store(busybox_home).layout
    inspected = json.loads(subprocess.run(
        ["skopeo", "inspect", "--no-tags", f"oci:{layout}:{image.name}"],
        capture_output=True, text=True, check=True).stdout)
    assert inspected["Digest"] == image.digest and len(inspected["Layers"]) == 3
    copy = tmp_path / "oci"
    push.push("checked:1", f"oci:{copy}:checked")
    bundle = tmp_path / "rootfs"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{copy}:checked", str(bundle)],
                   check=True, capture_output=True)
    assert (bundle / "data" / "old" / "d").read_text() == "d\n"
    assert not (bundle / "data" / "gone").exists()
    assert not (bundle / "data" / "old" / "c").exists()


def test_source_date_epoch_makes_two_builds_give_the_same_digest(busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", DELETING + "COPY f /f\n", {"f": "file\n"})
    first = build(context, "repro:1", epoch=1700000000, no_cache=True)
    time.sleep(1.1)  # a second later: mtimes differ unless clamped
    second = build(context, "repro:2", epoch=1700000000, no_cache=True)
    assert first.digest == second.digest
    assert first.layers == second.layers


def test_a_rebuild_reuses_every_layer_and_a_changed_copy_source_rebuilds_from_there(
        busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo one > /one\n"
                            "COPY app.txt /app.txt\nRUN cat /app.txt > /copy\n",
                            {"app.txt": "v1\n"})
    logs = []
    first = build(context, "cached:1", logs)
    again = build(context, "cached:1", logs)
    assert again.layers == first.layers
    assert logs[1].count("using cache") == 3 and "--> layer" not in logs[1]
    (context / "app.txt").write_text("v2\n")
    changed = build(context, "cached:2", logs)
    assert logs[2].count("using cache") == 1 and logs[2].count("--> layer") == 2
    assert changed.layers[:2] == first.layers[:2] and changed.layers[2:] != first.layers[2:]
    assert run_output("cached:2", ["cat", "/copy"]) == (0, "v2\n")
    no_cache = build(context, "cached:3", logs, no_cache=True)
    assert "using cache" not in logs[3] and no_cache.layers[0] == first.layers[0]


def test_a_fully_cached_rebuild_without_source_date_epoch_gives_the_same_image_digest(
        busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo one > /one\n"
                            "ENV GREETING=hi\nCOPY f /f\nCMD [\"cat\", \"/f\"]\n", {"f": "x\n"})
    first = build(context, "same:1")
    time.sleep(1.1)  # a second later: "now" in the config's `created` times has moved
    again = build(context, "same:2")
    assert again.digest == first.digest and again.config_digest == first.config_digest
    changed = build(context, "same:3", no_cache=True)
    assert changed.digest != first.digest


def test_gc_drops_build_cache_entries_whose_layers_an_rmi_removed(busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo gone > /gone\n")
    image = build(context, "collected:1")
    layer = image.layers[-1][0].digest
    cache = busybox_home / "build-cache"

    def entries_naming_the_layer():
        return [p for p in cache.glob("*.json") if layer in p.read_text()]

    assert len(entries_naming_the_layer()) == 2  # the RUN step's and the image's
    kept = {p for p in cache.glob("*.json")} - set(entries_naming_the_layer())
    Store(busybox_home).remove("collected:1")
    removed = container.gc()
    assert entries_naming_the_layer() == []
    assert sum(name.startswith("build-cache ") for name in removed) == 2
    assert {p for p in kept if p.exists()} == kept  # entries of images still stored stay
    logs = []
    build(context, "collected:2", logs)
    assert "using cache" not in logs[0] and "--> layer" in logs[0]


def test_workdir_for_a_non_root_user_is_made_by_root_before_the_user_applies(
        busybox_home, tmp_path):
    logs = []
    build(write_context(tmp_path / "ctx", "FROM busybox\nUSER 1000:1000\nWORKDIR /srv/app\n"
                        "RUN pwd && id -u\n"), "workdir:1", logs)
    assert "/srv/app\n1000\n" in logs[0]
    status, output = run_output("workdir:1", ["stat", "-c", "%u", "/srv/app"])
    assert (status, output) == (0, "0\n")  # root's, as Docker makes it; USER applies after


def test_copy_adds_files_directories_globs_and_honours_the_ignore_file(busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", (
        "FROM busybox\nWORKDIR /srv\nCOPY *.txt ./\nCOPY conf /etc/app/\n"
        "COPY --chown=1000:1000 conf/a.conf /owned\nARG V=default\nENV X=$V\n"
        "RUN echo $V > /from-arg\n"
        'CMD ["sh", "-c", "ls /srv /etc/app; stat -c %u:%g /owned; pwd; echo $X"]\n'),
        {"a.txt": "a", "b.txt": "b", "secret.txt": "no", "conf/a.conf": "c", "conf/x.log": "l"})
    (context / ".containerignore").write_text("secret.txt\n*/*.log\n")
    build(context, "copied:1", build_args={"V": "given"})
    status, output = run_output("copied:1")
    assert status == 0, output
    assert output.split() == ["/etc/app:", "a.conf", "/srv:", "a.txt", "b.txt", "1000:1000",
                              "/srv", "given"]
    assert run_output("copied:1", ["cat", "/from-arg"]) == (0, "given\n")
    assert "V=given" not in Store(busybox_home).image("copied:1").config.env


def test_add_extracts_a_local_tar_archive_and_refuses_urls(busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nADD files.tar.gz /opt/\n"
                            'RUN ["cp", "/opt/pkg/x", "/exec-form"]\n')
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "x").write_text("x\n")
    subprocess.run(["tar", "-czf", str(context / "files.tar.gz"), "-C", str(source), "pkg"],
                   check=True)
    build(context, "added:1")
    assert run_output("added:1", ["cat", "/opt/pkg/x", "/exec-form"]) == (0, "x\nx\n")
    (context / "Containerfile").write_text("FROM busybox\n\nADD https://example.com/x /x\n")
    with pytest.raises(ContainerfileError, match=r"^Containerfile:3: ADD .*URLs are not "):
        build(context, "added:2")


@pytest.mark.parametrize("source", ["../outside", "link-out", "link-out/secret", "/../outside"])
def test_copy_from_outside_the_context_is_refused(busybox_home, tmp_path, source):
    (tmp_path / "outside").write_text("host secret")
    context = write_context(tmp_path / "ctx", f"FROM busybox\nCOPY {source} /stolen\n")
    os.symlink(tmp_path, context / "link-out")
    with pytest.raises(ContainerfileError, match=r"^Containerfile:2: COPY .*(outside|no such)"):
        build(context, "escape:1")
    assert not [i for i in Store(busybox_home).images() if "escape" in i.name]


def test_an_unknown_instruction_is_one_line_with_its_line_number(busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\n# comment\nFETCH x\n")
    with pytest.raises(ContainerfileError) as raised:
        build(context, "unknown:1")
    assert str(raised.value).startswith("Containerfile:3: unknown instruction 'FETCH'")


def test_a_failed_step_leaves_no_image_no_container_and_no_mount(busybox_home, tmp_path):
    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN touch /x\nRUN exit 3\n")
    mounts_before = Path("/proc/self/mountinfo").read_text()
    with pytest.raises(BuildFailed, match=r"^Containerfile:3: 'RUN exit 3' failed \(exit "
                                          r"status 3\)"):
        build(context, "failed:1")
    assert not [i for i in Store(busybox_home).images() if "failed" in i.name]
    assert not [c for c in container.containers() if c.spec.image.endswith("busybox:latest")
                and not c.persistent]
    assert not list((busybox_home / "tmp").glob("build-*"))
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


def test_symlinks_a_run_step_plants_to_host_files_are_stored_as_links(busybox_home, tmp_path):
    import gzip
    import io
    import tarfile

    context = write_context(tmp_path / "ctx", "FROM busybox\n"
                            "RUN ln -s /etc/shadow /leak && ln -s / /hostroot\n")
    image = build(context, "planted:1")
    blob = Store(busybox_home).layout / "blobs" / "sha256" / image.layers[-1][0].digest[7:]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes()))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"leak", "hostroot"}
    assert all(m.issym() and m.size == 0 for m in members.values())


def test_commit_of_a_named_container_keeps_its_changes_and_the_image_config(
        busybox_home, tmp_path):
    with open(os.devnull, "w") as null:
        container.run("busybox", ["sh", "-c", "echo changed > /etc/motd; rm /bin/vi"],
                      name="to-commit", stdout=null)
    try:
        image = commit.commit("to-commit", "committed:1")
    finally:
        container.remove("to-commit", force=True)
    base = Store(busybox_home).image("busybox")
    assert image.layers[:-1] == base.layers and image.config.env == base.config.env
    assert image.config.cmd == base.config.cmd
    status, output = run_output("committed:1", ["sh", "-c", "cat /etc/motd; ls /bin/vi"])
    assert status != 0 and output.startswith("changed\n") and "No such file" in output
    history = json.loads(Store(busybox_home).layout.joinpath(
        "blobs", *image.config_digest.split(":")).read_text())["history"]
    assert history[-1]["created_by"] == "contained commit to-commit"


def test_push_writes_an_oci_archive_that_skopeo_reads_back(busybox_home, tmp_path):
    build(write_context(tmp_path / "ctx", DELETING), "pushed:1")
    archive = tmp_path / "pushed.tar"
    push.push("pushed:1", f"oci-archive:{archive}")
    inspected = subprocess.run(["skopeo", "inspect", "--no-tags", f"oci-archive:{archive}"],
                               capture_output=True, text=True, check=True)
    assert len(json.loads(inspected.stdout)["Layers"]) == 3
    with pytest.raises(push.BadDestination, match="cannot push to 'ftp://x'"):
        push.push("pushed:1", "ftp://x")


def test_push_to_the_session_registry_publishes_it_and_pull_brings_it_back(
        busybox_home, tmp_path, registry):
    built = build(write_context(tmp_path / "ctx", DELETING), "published:1")
    registry_home = _registry_home(registry)
    where = push.push("published:1", f"docker://{registry.address}/library/published:1",
                      registry_home=registry_home)
    assert where == f"{registry.address}/library/published:1"
    other = Store(tmp_path / "other-home")
    pulled = other.pull(f"docker://{registry.address}/library/published:1")
    assert [d for _, d in pulled.layers] == [d for _, d in built.layers]


@pytest.fixture
def podman():
    """Debian's podman with a state directory of its own (short: podman refuses a runroot over
    50 characters) and its containers under a cgroup parent of ours; all removed afterwards.
    Yields podman's argv, the options `run`/`build` take here (no network, this host's
    ulimits, the parent) and the state directory."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc)")
    short = Path(tempfile.mkdtemp(prefix="cpod-", dir="/tmp"))
    parent = f"contained-test-podman-{os.getpid()}"
    argv = ["podman", "--root", str(short / "root"), "--runroot", str(short / "run"),
            "--cgroup-manager", "cgroupfs", "--events-backend", "none", "--runtime", "runc"]
    run_options = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
                   "nproc=4096:4096", "--cgroup-parent", f"/{parent}"]
    try:
        yield argv, run_options, short
    finally:
        subprocess.run([*argv, "rm", "--all", "--force"], capture_output=True, timeout=120)
        subprocess.run([*argv, "rmi", "-a", "-f"], capture_output=True, timeout=120)
        subprocess.run([*argv, "system", "reset", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(short, ignore_errors=True)
        remove_cgroup_tree(parent)


def test_an_image_built_here_runs_under_podman(busybox_home, tmp_path, podman):
    argv, run_options, _ = podman
    build(write_context(tmp_path / "ctx", DELETING), "interop:1")
    archive = tmp_path / "interop.tar"
    push.push("interop:1", f"oci-archive:{archive}")
    pulled = subprocess.run([*argv, "pull", f"oci-archive:{archive}"],
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    image_id = pulled.stdout.split()[-1]  # the archive carries no name: run it by its ID
    done = subprocess.run([*argv, "run", "--rm", "--pull", "never", *run_options, image_id],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-1] == "ok", done.stderr
    assert "gone" not in done.stdout  # deleted files and directories stay deleted there too


def _registry_home(state) -> Path:
    """The CONTAINED_HOME whose registry the session fixture started (its state lives there)."""
    from contained.images import registry as local_registry

    directory = Path(state.directory)
    for candidate in (directory.parent, *directory.parents):
        if local_registry.registry_dir(candidate) == directory:
            return candidate
    raise AssertionError(f"no home for {directory}")


def test_cli_build_explains_each_step_and_commit_and_push_print_where(busybox_home, tmp_path,
                                                                       capfd):
    from contained import cli

    context = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\n")
    assert cli.main(["build", "--explain", "--no-cache", "-t", "cli:1", str(context)]) == 0
    out, err = capfd.readouterr()
    assert out.startswith("cli:1 sha256:")
    assert "STEP 2/2: RUN echo hi > /hi" in err
    assert "+ contained run --net none -w / <the layers so far> /bin/sh -c 'echo hi > /hi'" in err
    assert "+ tar --sort=name" in err
    archive = tmp_path / "cli.tar"
    assert cli.main(["push", "cli:1", f"docker-archive:{archive}:cli:1"]) == 0
    assert archive.stat().st_size > 0
    (context / "Containerfile").write_text("FROM busybox\nRUN false\n")
    assert cli.main(["build", "-t", "cli:2", str(context)]) == 125
    err = capfd.readouterr().err
    assert err.splitlines()[-1] == ("contained: error: Containerfile:2: 'RUN false' failed "
                                    "(exit status 1); nothing was tagged")


#: What podman build leaves in a layer that is no change of the Containerfile's: the mount
#: points it makes for its own /etc/hostname and /run.
PODMAN_MOUNT_POINTS = {"etc/hostname", "run"}


def test_podman_build_of_the_same_containerfile_gives_the_same_file_tree(busybox_home, tmp_path,
                                                                       podman):
    argv, run_options, short = podman
    context = write_context(tmp_path / "ctx", DELETING.replace(
        "FROM busybox", "FROM docker.io/library/busybox:latest") + "COPY f /f\n", {"f": "x\n"})
    build(context, "ours:1")
    push.push("busybox", f"oci-archive:{short}/busybox.tar")
    image_id = subprocess.run([*argv, "pull", f"oci-archive:{short}/busybox.tar"],
                              capture_output=True, text=True, check=True).stdout.split()[-1]
    subprocess.run([*argv, "tag", image_id, "docker.io/library/busybox:latest"], check=True)
    subprocess.run([*argv, "build", "--pull=never", *run_options, "-t", "theirs:1",
                    str(context)], check=True, capture_output=True, timeout=300)
    subprocess.run([*argv, "save", "--format", "oci-archive", "-o", f"{short}/theirs.tar",
                    "localhost/theirs:1"], check=True, capture_output=True)
    Store(busybox_home).pull(f"oci-archive:{short}/theirs.tar:localhost/theirs:1")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    Store(busybox_home).unpack("ours:1", ours)
    Store(busybox_home).unpack("localhost/theirs:1", theirs)
    assert _tree(ours) == {k: v for k, v in _tree(theirs).items() if k not in PODMAN_MOUNT_POINTS}


def _tree(root: Path) -> dict:
    """Every path under root: its type, mode and content (files) or target (links)."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            what = ("link", os.readlink(path))
        elif path.is_file():
            what = ("file", info.st_mode & 0o7777, path.read_bytes())
        else:
            what = ("dir" if path.is_dir() else "other", info.st_mode & 0o7777)
        found[str(path.relative_to(root))] = what
    return found
