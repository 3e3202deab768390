"""Running skopeo, the tool that copies images between registries, OCI layouts and archives.

Taught in notebook 04 ("Images"): the tutorial's first step is ::

    skopeo copy docker://busybox:latest oci:busybox:latest
    skopeo inspect --no-tags docker://busybox:latest

This module builds those command lines and turns skopeo's failures (``level=fatal msg="..."``,
often a paragraph) into one line that says what to do. Two quirks of skopeo 1.9.3 shape it:
it ignores ``CONTAINERS_REGISTRIES_CONF``, so a registries.conf goes in as the global flag
``--registries-conf FILE``; and ``inspect`` lists the repository's tags on the real docker.io
even through a mirror, so we always pass ``--no-tags``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from contained.errors import ContainedError
from contained.home import ensure_home

SKOPEO = "skopeo"
SYSTEM_POLICIES = (Path("/etc/containers/policy.json"),
                   Path.home() / ".config" / "containers" / "policy.json")
# What Debian ships as /etc/containers/policy.json: accept images without signatures. Used only
# where no policy exists at all, because skopeo refuses to run without one.
DEFAULT_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


class SkopeoMissing(ContainedError):
    """skopeo is not installed."""


class SkopeoFailed(ContainedError):
    """skopeo failed for a reason we do not recognise; the message is skopeo's own."""


class RegistryImageNotFound(ContainedError):
    """The registry answered, but has no such repository or tag."""


class RegistryUnreachable(ContainedError):
    """The registry cannot be reached (no network, nothing listening, unknown host)."""


class RegistryNotHTTPS(ContainedError):
    """The registry speaks plain HTTP and TLS verification was on."""


class RegistryAuthRequired(ContainedError):
    """The registry wants credentials."""


def command(args: list[str], *, registries_conf: Path | None = None) -> list[str]:
    """A skopeo command line, with the global flags that must precede the subcommand."""
    argv = [SKOPEO]
    if registries_conf is not None:
        argv += ["--registries-conf", str(registries_conf)]
    if not any(path.exists() for path in SYSTEM_POLICIES):
        argv += ["--policy", str(_fallback_policy())]
    return argv + args


def copy(source: str, dest: str, *, action: str, registries_conf: Path | None = None,
         src_tls_verify: bool = True, dest_tls_verify: bool = True,
         architecture: str | None = None, all_images: bool = False, progress: bool = False,
         not_found_hint: str = "check the name and tag",
         dest_authfile: Path | None = None) -> None:
    """``skopeo copy SOURCE DEST``; failures raise one-line errors starting with `action`.

    With `progress`, skopeo's own report (progress bars on a terminal) goes to our stderr;
    otherwise it runs ``--quiet``. `architecture` picks the image from a multi-arch index
    (skopeo's default is the architecture it was built for, which may differ from the host's).
    `dest_authfile`: the destination's credentials file instead of the caller's.
    """
    if progress and not _has_fileno(sys.stderr):
        progress = False  # e.g. a Jupyter kernel's stderr: skopeo needs a real file descriptor
    args = ["copy"]
    if not src_tls_verify:
        args.append("--src-tls-verify=false")
    if not dest_tls_verify:
        args.append("--dest-tls-verify=false")
    if dest_authfile is not None:
        args += ["--dest-authfile", str(dest_authfile)]
    if architecture:
        args += ["--override-arch", architecture, "--override-os", "linux"]
    if all_images:
        args.append("--all")
    if not progress:
        args.append("--quiet")
    argv = command(args + [source, dest], registries_conf=registries_conf)
    stdout = sys.stderr if progress else subprocess.DEVNULL
    _run(argv, stdout=stdout, action=action, not_found_hint=not_found_hint)


def inspect(source: str, *, action: str, raw: bool = False, config: bool = False,
            registries_conf: Path | None = None, tls_verify: bool = True,
            not_found_hint: str = "check the name and tag") -> dict:
    """``skopeo inspect --no-tags SOURCE`` (or its raw manifest / config) as parsed JSON."""
    args = ["inspect"]
    if raw:
        args.append("--raw")
    elif config:
        args.append("--config")
    else:
        args.append("--no-tags")
    if not tls_verify:
        args.append("--tls-verify=false")
    argv = command(args + [source], registries_conf=registries_conf)
    output = _run(argv, stdout=subprocess.PIPE, action=action, not_found_hint=not_found_hint)
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise SkopeoFailed(f"{action}: skopeo inspect printed something that is not JSON") from None


def credentials_environment() -> dict[str, str] | None:
    """skopeo's environment where its credentials lookup would fail, else None (ours).

    Without XDG_RUNTIME_DIR (no login session: a Jupyter server, `su`, cron), a normal user's
    skopeo reads /run/containers/UID/auth.json; once root has run podman, /run/containers is
    mode 0700, and that is "permission denied" rather than "no credentials": every pull fails.
    Then REGISTRY_AUTH_FILE names the user's own ~/.config/containers/auth.json (where podman
    keeps them when there is no runtime directory), whether it exists or not.
    """
    if os.geteuid() == 0 or "REGISTRY_AUTH_FILE" in os.environ or \
            os.environ.get("XDG_RUNTIME_DIR"):
        return None
    try:
        os.stat(f"/run/containers/{os.geteuid()}")
        return None
    except PermissionError:
        auth = Path.home() / ".config" / "containers" / "auth.json"
        return {**os.environ, "REGISTRY_AUTH_FILE": str(auth)}
    except OSError:
        return None  # not there: skopeo finds no credentials, as it should


def _run(argv: list[str], *, stdout, action: str, not_found_hint: str) -> str:
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.PIPE, text=True, check=False,
                                env=credentials_environment())
    except FileNotFoundError:
        raise SkopeoMissing(f"{action}: skopeo is not installed; run `apt-get install skopeo`"
                            ) from None
    if result.returncode != 0:
        raise explain_failure(result.stderr, action=action, not_found_hint=not_found_hint)
    return result.stdout or ""


def fatal_message(stderr: str) -> str:
    """skopeo's error without the logrus decoration: the msg="..." of the last fatal line."""
    for line in reversed(stderr.strip().splitlines()):
        match = re.search(r'level=fatal msg="((?:[^"\\]|\\.)*)"', line)
        if match:
            return match.group(1).replace('\\"', '"').replace("\\\\", "\\")
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "skopeo failed without a message"


def explain_failure(stderr: str, *, action: str,
                    not_found_hint: str = "check the name and tag") -> ContainedError:
    """The one-line error for a skopeo failure, by what went wrong."""
    message = fatal_message(stderr)
    registry = _registry_in(message)
    lowered = message.lower()
    if "manifest unknown" in lowered or "name unknown" in lowered or "not found" in lowered:
        where = f"registry {registry}" if registry else "the source"
        return RegistryImageNotFound(f"{action}: {where} has no such image; {not_found_hint}")
    if "server gave http response to https client" in lowered:
        return RegistryNotHTTPS(f"{action}: registry {registry or '?'} speaks plain HTTP; "
                                f"add --tls-verify=false if you trust it")
    if "unauthorized" in lowered or "authentication required" in lowered:
        return RegistryAuthRequired(f"{action}: registry {registry or '?'} requires a login; "
                                    f"run `skopeo login {registry or 'REGISTRY'}` first")
    if any(text in lowered for text in ("connection refused", "no such host", "i/o timeout",
                                        "network is unreachable", "is blocked in")):
        detail = message[message.find("dial tcp"):] if "dial tcp" in message else message
        return RegistryUnreachable(
            f"{action}: registry {registry or '?'} is unreachable ({_short(detail)}); offline? "
            f"run `contained registry start` and pull with its --registries-conf")
    return SkopeoFailed(f"{action}: {_short(message)}")


def _registry_in(message: str) -> str | None:
    # The first registry skopeo names is the one it tried first (a mirror, if any).
    for pattern in (r" in ([^/\s]+)/", r"registry ([^\s:/]+(?::\d+)?)", r"https?://([^/\s\"]+)/",
                    r"docker://([^/\s]+)/"):
        match = re.search(pattern, message)
        if match:
            return match.group(1)
    return None


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit] + "…"


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _fallback_policy() -> Path:
    path = ensure_home() / "policy.json"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(DEFAULT_POLICY))
        tmp.replace(path)
    return path
