"""``contained build``: a Containerfile run step by step, each RUN's upper directory a layer.

Taught in notebook 09 ("Build an image"). What one RUN step equals (``--explain`` prints it)::

    contained run --name step IMAGE-SO-FAR sh -c 'COMMAND'     # same isolation, limits, seccomp
    # upper/ of that container: whiteouts → .wh.NAME, opaque dirs → .wh..wh..opq
    tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --numeric-owner --xattrs -C upper -c . \\
        | gzip -n > layer.tar.gz && sha256sum layer.tar.gz      # digest; the .tar's is diff_id
    contained rm step

COPY and ADD stage their files in a temporary directory laid out as the image will see it, and
that directory becomes the layer the same way. ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL and
EXPOSE only change the config. At the end the config (the parent's, with one history entry per
instruction) and the manifest are written and tagged (`contained.images.upperlayer.tag_image`).

The cache: every layer step has a key, the hash of the previous step's key (the chain starts
at the FROM image's digest), the instruction, the environment it runs in, and for COPY/ADD the
digest of what it copies (names, modes and contents, not mtimes). ``HOME/build-cache/KEY.json``
names the layer it made; a step whose key is there (and whose blob is still in the store) is not
run again; the final config is reused too when only its `created` times would differ, so a
fully cached rebuild has the same digest (`contained.images.buildcache`). A failed step raises
before anything is tagged, and its container and staging directory are removed whatever happened.
"""


import gzip
import hashlib
import json
import os
import posixpath
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from contained import records
from contained.errors import ContainedError
from contained.images import buildcache, containerfile, oci, upperlayer
from contained.images.containerfile import Instruction
from contained.records import field, record

LAYER_STEPS = ("RUN", "COPY", "ADD")
DEFAULT_SHELL = ["/bin/sh", "-c"]


class BuildFailed(ContainedError):
    """A build step failed: the message names the Containerfile's line."""


@record
class BuildOptions:
    """What ``contained build`` was asked for."""

    tag: str
    context: Path
    file: str | None = None
    build_args: dict = field(default_factory=dict)
    no_cache: bool = False
    net: str = "none"
    epoch: int | None = None
    output: object = None        # where RUN output and progress go (a file or descriptor)
    explain: bool = False        # also print each step as the shell commands it equals


@record
class _State:
    """The image so far."""

    base: str | None = None                       # the FROM image's name (None: scratch)
    layers: list = field(default_factory=list)    # [(Descriptor, diff_id)], bottom first
    config: dict = field(default_factory=dict)    # the whole OCI config blob
    chain: str = ""                               # the cache key of the last step
    variables: dict = field(default_factory=dict)  # ARGs in scope

    @property
    def runtime(self) -> dict:
        return self.config.setdefault("config", {})

    @property
    def env(self) -> list[str]:
        return list(self.runtime.get("Env") or [])

    def scope(self) -> dict:
        """Variables for substitution: ARGs, overridden by ENV (as Docker does)."""
        values = dict(self.variables)
        values.update(item.partition("=")[::2] for item in self.env)
        return values


def build(options: BuildOptions, store=None):
    """Build the Containerfile in `options.context` and tag the result; return the Image."""
    from contained.images.store import Store

    store = store or Store()
    context = Path(options.context)
    if not context.is_dir():
        raise BuildFailed(f"build context {context} is not a directory")
    path = containerfile.find(context, options.file)
    instructions = containerfile.parse(path.read_text(), path.name)
    builder = _Builder(store, options, context.resolve(), containerfile.ignore_patterns(context))
    started = time.monotonic()
    state = _State(variables={})
    for number, instruction in enumerate(instructions, start=1):
        builder.say(f"STEP {number}/{len(instructions)}: {instruction.text}")
        builder.step(state, instruction)
    # The same config as the build whose layers were all reused: the same image digest.
    config = builder.cache.config(state.config, state.layers)
    image = upperlayer.tag_image(store, state.layers, config, options.tag)
    builder.say(f"--> {image.name} {image.digest} ({builder.counts[False]} layer steps run, "
                f"{builder.counts[True]} cached, {time.monotonic() - started:.2f} s)")
    return image


class _Builder:
    def __init__(self, store, options: BuildOptions, context: Path, ignore):
        self.store, self.options, self.context, self.ignore = store, options, context, ignore
        self.cache = buildcache.BuildCache(store, enabled=not options.no_cache)
        self.counts = {False: 0, True: 0}   # layer steps run, and taken from the cache

    def say(self, line: str) -> None:
        out = self.options.output
        if out is None:
            out = sys.stderr
        if isinstance(out, int):
            os.write(out, (line + "\n").encode())
        else:
            out.write(line + "\n")
            out.flush()

    def explain(self, *lines: str) -> None:
        if self.options.explain:
            for line in lines:
                self.say(f"  + {line}")

    # -- one instruction -------------------------------------------------------------------

    def step(self, state: _State, instruction: Instruction) -> None:
        keyword = instruction.keyword
        if keyword == "ARG":
            return self._arg(state, instruction)
        if keyword == "FROM":
            return self._from(state, instruction)
        if keyword in LAYER_STEPS:
            return self._layer_step(state, instruction)
        return self._config_step(state, instruction)

    def _arg(self, state: _State, instruction: Instruction) -> None:
        name, equals, default = instruction.arguments.partition("=")
        name = name.strip()
        if not name.isidentifier():
            raise instruction.error(f"ARG: invalid name {name!r}")
        value = self.options.build_args.get(name, default if equals else "")
        state.variables[name] = containerfile.substitute(instruction, value, state.scope())

    def _from(self, state: _State, instruction: Instruction) -> None:
        name = containerfile.substitute(instruction, instruction.arguments.split()[0],
                                        state.scope())
        if name == "scratch":
            state.config = upperlayer.parent_config(self.store, None)
            state.chain = _hash("scratch")
            return
        try:
            image = self.store.image(name)
        except ContainedError as error:
            raise instruction.error(f"FROM {name}: {error}") from None
        state.base, state.layers = image.name, list(image.layers)
        state.config = upperlayer.parent_config(self.store, image)
        state.chain = _hash(image.digest)
        self.explain(f"# the layers of {image.name} ({image.digest}) are the start")

    def _config_step(self, state: _State, instruction: Instruction) -> None:
        keyword, runtime = instruction.keyword, state.runtime
        text = instruction.arguments
        if keyword not in containerfile.NOT_SUBSTITUTED:
            text = containerfile.substitute(instruction, text, state.scope())
        if keyword == "ENV":
            env = state.env
            for name, value in containerfile.key_values(instruction, text):
                env = [item for item in env if item.partition("=")[0] != name] + [f"{name}={value}"]
            runtime["Env"] = env
        elif keyword == "WORKDIR":
            runtime["WorkingDir"] = posixpath.normpath(
                posixpath.join(runtime.get("WorkingDir") or "/", text))
        elif keyword == "USER":
            runtime["User"] = text
        elif keyword in ("CMD", "ENTRYPOINT"):
            runtime[keyword.title()] = _command(instruction)
            if keyword == "ENTRYPOINT":
                runtime.pop("Cmd", None)  # Docker resets Cmd when the entrypoint changes
        elif keyword == "LABEL":
            labels = runtime.setdefault("Labels", {})
            labels.update(containerfile.key_values(instruction, text))
        elif keyword == "EXPOSE":
            ports = runtime.setdefault("ExposedPorts", {})
            for port in containerfile.words(instruction, text):
                ports[port if "/" in port else f"{port}/tcp"] = {}
        state.config = upperlayer.add_history(state.config, instruction.text,
                                          upperlayer.created_timestamp(self.options.epoch), None)

    # -- layer steps: RUN, COPY, ADD -------------------------------------------------------

    def _layer_step(self, state: _State, instruction: Instruction) -> None:
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=self._tmp()))
        try:
            if instruction.keyword == "RUN":
                argv = _command(instruction)
                key = self._key(state, instruction, [argv])
                layer = self._cached(key) or self._run(state, instruction, argv, key)
            else:
                content = hashlib.sha256()
                chown = self._stage(state, instruction, staging / "layer", content)
                key = self._key(state, instruction, [content.hexdigest()])
                layer = self._cached(key) or self._write(staging / "layer", key, chown)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        descriptor, diff_id = layer
        state.layers.append((descriptor, diff_id))
        state.chain = key
        state.config = upperlayer.add_history(state.config, instruction.text,
                                          upperlayer.created_timestamp(self.options.epoch), diff_id)

    def _key(self, state: _State, instruction: Instruction, extra: list) -> str:
        runtime = state.runtime
        return _hash(json.dumps([state.chain, instruction.keyword, instruction.flags, extra,
                                 instruction.arguments, state.env, runtime.get("WorkingDir"),
                                 runtime.get("User"), sorted(state.variables.items()),
                                 self.options.epoch], sort_keys=True))

    def _cached(self, key: str):
        layer = self.cache.layer(key)  # None too when an rmi removed its blob: run it again
        if layer is not None:
            self.say(f"--> using cache {key[:12]} (layer {layer[0].digest[:19]})")
            self._count(cached=True)
        return layer

    def _count(self, cached: bool) -> None:
        self.counts[cached] += 1

    def _write(self, directory: Path, key: str, chown: tuple[int, int] | None = None,
               exclude: frozenset = frozenset()):
        self.explain(f"tar --sort=name --numeric-owner --xattrs -C {directory} -c . | gzip -n "
                     "> layer.tar.gz; sha256sum layer.tar.gz")
        with self.store.lock(shared=True):
            built = upperlayer.layer_from_directory(directory, self.store.layout,
                                                epoch=self.options.epoch, chown=chown,
                                                exclude=exclude)
        layer = (built.descriptor, built.diff_id)
        self.cache.remember_layer(key, layer)
        self._count(cached=False)
        self.say(f"--> layer {built.descriptor.digest[:19]} ({built.descriptor.size} bytes)")
        return layer

    def _tmp(self) -> Path:
        tmp = Path(self.store.home) / "tmp"
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tmp

    # -- RUN -------------------------------------------------------------------------------

    def _run(self, state: _State, instruction: Instruction, argv: list[str], key: str):
        from contained.images import unpack
        from contained.runtime import container

        if state.base is None:
            raise instruction.error("RUN needs a FROM image with a shell (FROM scratch has "
                                    "none): start FROM busybox")
        with self.store.lock(shared=True):
            self.store.layer_cache.mkdir(mode=0o700, exist_ok=True)
            lowers = [str(unpack.cached_layer(self.store.layer_cache,
                                              oci.blob_path(self.store.layout, d.digest), d, i))
                      for d, i in state.layers]
        spec = container.build_spec(state.base, argv, net=self.options.net, store=self.store,
                                    hostname="build")
        # The layers so far, not the FROM image's only; kept after the command ends
        # (remove=False) so its upper directory can become the layer.
        # ARG values are in RUN's environment (not in the image's), under ENV, as in Docker.
        declared = {item.partition("=")[0] for item in state.env}
        env = state.env + [f"{k}={v}" for k, v in state.variables.items() if k not in declared]
        # WORKDIR is made by the runtime, as root, before USER applies (as Docker does):
        # a non-root USER could not create /srv itself.
        spec = records.replace(spec, lowers=lowers, env=env or spec.env,
                                   user=state.runtime.get("User") or "", remove=False,
                                   working_dir=state.runtime.get("WorkingDir") or "/")
        self.explain(f"contained run --net {self.options.net} -w {spec.working_dir} "
                     "<the layers so far> " + " ".join(_quote(a) for a in argv),
                     f"# then {spec.directory}/upper becomes the layer")
        try:
            out = self.options.output if self.options.output is not None else sys.stderr
            with open(os.devnull) as null:
                result = container.start_spec(spec, stdin=null, stdout=out, stderr=out,
                                              named=False).wait(settle=True)
            if result.status != 0:
                why = result.message or f"exit status {result.status}"
                raise BuildFailed(f"{instruction.source}:{instruction.line}: "
                                  f"{instruction.text[:60]!r} failed ({why}); nothing was tagged")
            return self._write(Path(spec.directory) / "upper", key,
                               exclude=upperlayer.RUNTIME_FILES)
        finally:
            container._remove_files(spec)

    # -- COPY and ADD ----------------------------------------------------------------------

    def _stage(self, state: _State, instruction: Instruction, layer: Path,
               content) -> tuple[int, int]:
        """Lay out what COPY/ADD copies under `layer` as the image will see it; return the
        owner its files get."""
        text = containerfile.substitute(instruction, instruction.arguments, state.scope())
        items = [containerfile.substitute(instruction, w, state.scope())
                 for w in containerfile.words(instruction, text)]
        if len(items) < 2:
            raise instruction.error(f"{instruction.keyword} needs a source and a destination")
        *sources, dest = items
        if not dest.startswith("/"):
            dest = posixpath.join(state.runtime.get("WorkingDir") or "/", dest)
        chown = _chown(instruction)
        matched = [path for source in sources for path in self._sources(instruction, source)]
        into_dir = dest.endswith("/") or len(matched) > 1 or any(_is_glob(s) for s in sources)
        layer.mkdir(mode=0o755)
        content.update(json.dumps([dest, chown]).encode())
        for relative, real in matched:
            target = _staged_path(layer, dest)
            info = os.lstat(real)
            if stat.S_ISDIR(info.st_mode):
                self._copy_tree(real, target, relative, content)
            elif instruction.keyword == "ADD" and _is_archive(real):
                self._extract(real, target, content)
            else:
                if into_dir:
                    target = target / posixpath.basename(relative)
                self._copy_tree(real, target, relative, content)
        return chown

    def _sources(self, instruction: Instruction, source: str) -> list[tuple[str, Path]]:
        """(context-relative name, real path) pairs, each proven to stay inside the context."""
        if "://" in source:
            raise instruction.error(f"{instruction.keyword} {source}: URLs are not supported "
                                    "(nothing can be fetched offline); download it into the "
                                    "context and COPY it")
        relative = posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."
        if relative == ".." or relative.startswith("../"):
            raise instruction.error(f"{instruction.keyword} {source}: outside the build context")
        if _is_glob(relative):
            names = [name for name in self._context_names()
                     if _glob_match(name, relative)]
            if not names:
                raise instruction.error(f"{instruction.keyword} {source}: no file in the "
                                        "context matches")
        else:
            names = [relative]
        found = []
        for name in names:
            real = Path(os.path.realpath(self.context / name))
            if real != self.context and self.context not in real.parents:
                raise instruction.error(f"{instruction.keyword} {source}: {name} leads outside "
                                        "the build context (a symlink?)")
            if not os.path.lexists(real):
                raise instruction.error(f"{instruction.keyword} {source}: no such file in the "
                                        "build context")
            if name != "." and containerfile.ignored(name, self.ignore):
                raise instruction.error(f"{instruction.keyword} {source}: excluded by the "
                                        "context's ignore file")
            found.append((name, real))
        return found

    def _context_names(self) -> list[str]:
        names = []
        for directory, dirnames, filenames in os.walk(self.context):  # never follows symlinks
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                relative = os.path.relpath(os.path.join(directory, name), self.context)
                if not containerfile.ignored(relative, self.ignore):
                    names.append(relative)
        return names

    def _copy_tree(self, source: Path, target: Path, relative: str, content) -> None:
        """Copy a file, symlink or directory (its contents), never following a symlink inside;
        ignored names are skipped; names, modes, link targets and bytes go into `content`."""
        info = os.lstat(source)
        content.update(f"{relative}\0{stat.S_IMODE(info.st_mode):o}\0".encode())
        target.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISDIR(info.st_mode):
            target.mkdir(exist_ok=True)
            for name in sorted(os.listdir(source)):
                child = posixpath.join(relative, name) if relative != "." else name
                if not containerfile.ignored(child, self.ignore):
                    self._copy_tree(source / name, target / name, child, content)
        elif stat.S_ISLNK(info.st_mode):
            link = os.readlink(source)
            content.update(link.encode())
            target.unlink(missing_ok=True)
            os.symlink(link, target)
        elif stat.S_ISREG(info.st_mode):
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
                while chunk := src.read(upperlayer.COPY_CHUNK):
                    content.update(chunk)
                    dst.write(chunk)
        else:
            return  # devices, fifos and sockets are not copied
        if not stat.S_ISLNK(info.st_mode):
            os.chmod(target, stat.S_IMODE(info.st_mode))
        os.utime(target, ns=(info.st_mtime_ns, info.st_mtime_ns), follow_symlinks=False)

    def _extract(self, archive: Path, target: Path, content) -> None:
        """ADD of a tar archive: extracted by the layer unpacker, which trusts no entry."""
        from contained.images import unpack

        data = archive.read_bytes()
        content.update(data)
        plain = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        media = oci.MEDIA_TYPE_LAYER_GZIP if plain is not data else oci.MEDIA_TYPE_LAYER
        descriptor = oci.Descriptor(media, "sha256:" + hashlib.sha256(data).hexdigest(),
                                    len(data))
        target.mkdir(parents=True, exist_ok=True)
        unpack.unpack_layer(archive, descriptor, "sha256:" + hashlib.sha256(plain).hexdigest(),
                            target, whiteouts="apply")


# ---------------------------------------------------------------------------------------------

def _command(instruction: Instruction) -> list[str]:
    """The exec form as written, or the shell form run by /bin/sh -c."""
    if instruction.exec_form is not None:
        return list(instruction.exec_form)
    if not instruction.arguments:
        return []
    return [*DEFAULT_SHELL, instruction.arguments]


def _chown(instruction: Instruction) -> tuple[int, int] | None:
    value = instruction.flags.get("chown")
    if value is None:
        return (0, 0)  # COPY gives files to root, whoever owns them in the context
    user, _, group = value.partition(":")
    ids = {"root": "0"}
    user, group = ids.get(user, user), ids.get(group or user, group or user)
    if not (user.isdigit() and group.isdigit()):
        raise instruction.error(f"--chown={value}: give numeric ids, e.g. --chown=1000:1000")
    return int(user), int(group)


def _staged_path(layer: Path, dest: str) -> Path:
    relative = posixpath.normpath(dest).lstrip("/")
    if relative.startswith(".."):
        relative = ""
    return layer / relative if relative not in ("", ".") else layer


def _is_archive(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_match(name: str, pattern: str) -> bool:
    import fnmatch

    return len(name.split("/")) == len(pattern.split("/")) and fnmatch.fnmatchcase(name, pattern)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
