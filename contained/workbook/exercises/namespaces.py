"""Notebook 01's exercises (namespaces): which namespaces a command makes, a hostname of its own,
and what PID 1 of a namespace survives.

01.1 `check_new_namespaces` reads an ``unshare`` command line's flags; 01.2 `check_uts_command`
runs the learner's command, as root inside `sandbox.run_in_sandbox` (rootless: in a user
namespace of its own), and checks it set the name and read it back; 01.3 is a predict-then-run
question. What they compare with::

    readlink /proc/self/ns/*                          # inside and outside: NEW or shared
    unshare --uts sh -c 'hostname lab; hostname'      # a hostname of its own, the host's intact
"""

import os
import re
import shlex
import subprocess

from contained.runtime import namespaces
from contained.workbook import lab
from contained.workbook.exercises.hints import (
    Feedback,
    exercise,
    prediction,
    right,
    unanswered,
    wrong,
)
from contained.workbook.exercises.sandbox import run_in_sandbox, run_in_user_namespace

_UNSHARE_FLAGS = {
    "--mount": "mount", "-m": "mount", "--uts": "uts", "-u": "uts", "--ipc": "ipc", "-i": "ipc",
    "--net": "net", "-n": "net", "--pid": "pid", "-p": "pid", "--cgroup": "cgroup",
    "-C": "cgroup", "--user": "user", "-U": "user",
}


def kinds_in(command: str) -> set[str]:
    """The namespace kinds an ``unshare ...`` command line creates."""
    kinds = set()
    for word in shlex.split(command):
        flag = word.split("=", 1)[0]
        if flag in _UNSHARE_FLAGS:
            kinds.add(_UNSHARE_FLAGS[flag])
        elif flag == "-r" or flag == "--map-root-user":
            kinds.add("user")
    return kinds


@exercise("01.1",
          concept="each namespace kind has its own unshare flag; a kind without its flag is "
                  "shared with the host, and --fork is not a namespace",
          where="the table at the top of this notebook (kind → flag) and the \"All at once\" "
                "comparison table (NEW vs shared)",
          solution='{"uts", "net"}: --uts and --net make new ones, --fork only forks')
def check_new_namespaces(command: str, answer: set | list | None) -> Feedback:
    """Which namespaces does `command` give its process a new one of? (compare
    ``readlink /proc/self/ns/*`` inside and outside)"""
    if answer is None:
        # the example must never be the answer itself
        example = '{"ipc"}' if kinds_in(command) != {"ipc"} else '{"pid"}'
        return unanswered(f"set answer to a set of kinds, e.g. {example}")
    given = {str(kind).strip().lower() for kind in answer}
    given = {"mount" if kind == "mnt" else kind for kind in given}
    unknown = given - set(namespaces.KINDS)
    if unknown:
        return wrong(f"{', '.join(sorted(unknown))} is not a namespace kind; the kinds are "
                     f"{', '.join(namespaces.KINDS)}")
    expected = kinds_in(command)
    if given == expected:
        return right(f"`{command}` makes new {', '.join(sorted(expected))} namespaces; the "
                     "others are shared with the host.")
    missing, extra = expected - given, given - expected
    parts = []
    if missing:
        parts.append(f"you left out {', '.join(sorted(missing))} (look for its flag in the "
                     "command)")
    if extra:
        parts.append(f"{', '.join(sorted(extra))} is shared with the host: the command has no "
                     "flag for it, so its link in /proc/self/ns stays the same")
    return wrong("; ".join(parts) + ".")


@exercise("01.2",
          concept="the hostname lives in the UTS namespace: set it *inside* a new one, then "
                  "read it back from the kernel in the same shell",
          where='the "UTS: a hostname of our own" cell: its `unshare --uts sh -c \'...\'` line',
          solution="unshare --uts sh -c 'hostname lab; hostname'")
def check_uts_command(command: str | None, hostname: str = "lab") -> Feedback:
    """A command that prints `hostname` from a new UTS namespace, leaving the host's alone
    (``unshare --uts sh -c 'hostname lab; hostname'``). As root it is run, but in namespaces
    of its own over a read-only view of the host (`run_in_sandbox`); it must set the name and
    read it back (``unshare --uts echo lab`` prints the word and proves nothing)."""
    if command is None:
        return unanswered(f"set answer to a shell command that prints {hostname!r} from a new "
                           "UTS namespace")
    if "unshare" not in command:
        return wrong("the command must start a new namespace with `unshare`; without it, "
                     "`hostname ...` would rename the host itself")
    if "uts" not in kinds_in(command):
        return wrong("`unshare` needs --uts (or -u): the hostname lives in the UTS namespace, "
                     "and without a new one you would rename the host")
    missing = _uts_words_feedback(command, hostname)
    if os.geteuid() != 0 and not lab.user_namespaces():
        if missing is not None:
            return missing
        return right("the command has the right shape (run the workbook as root to check that "
                     "it really prints the new hostname).")
    before = os.uname().nodename
    done = run_in_sandbox(command) if os.geteuid() == 0 else run_in_user_namespace(command)
    after = os.uname().nodename
    if after != before:
        # Should not happen with --uts, but never leave the machine renamed by an exercise.
        subprocess.run(["hostname", before], check=False)
        return wrong(f"the host's hostname changed to {after!r} (now put back to {before!r}): "
                     "the `hostname` command ran outside the new namespace")
    lines = done.stdout.split()
    if done.returncode != 0:
        return wrong(f"the command failed (status {done.returncode}): "
                     f"{done.stderr.strip() or 'no message'}")
    if hostname not in lines:
        return wrong(f"it printed {done.stdout.strip()!r}, not {hostname!r}: set the name, then "
                     "print it, in the same shell inside unshare (`sh -c 'hostname "
                     f"{hostname}; hostname'`)")
    if missing is not None:
        return missing  # it printed the name, but not by setting and reading it
    return right(f"it printed {hostname!r} and the host is still called {before!r}.")


def _uts_words_feedback(command: str, hostname: str) -> Feedback | None:
    """What is missing for `command` to set the name and read it back from the kernel (an
    `echo lab` prints the word without any namespace), or None."""
    words = _simple_commands(command)
    if not any(_sets_hostname(argv, hostname) for argv in words):
        return wrong(f"the command never sets the hostname: `echo {hostname}` prints the word "
                     f"whatever the namespace holds. Run `hostname {hostname}` inside the new "
                     "UTS namespace, then read it back")
    if not any(_reads_hostname(argv) for argv in words) and not _HOSTNAME_SUBSTITUTION.search(
            command):
        return wrong(f"the command sets the name but never reads it back from the kernel: end "
                     f"with `hostname` (no argument) or `uname -n`, not `echo {hostname}`")
    return None


# `echo $(hostname)` reads the name from the kernel too.
_HOSTNAME_SUBSTITUTION = re.compile(r"\$\(\s*(hostname|uname\s+-n)\s*\)"
                                    r"|`\s*(hostname|uname\s+-n)\s*`")
_SHELLS = {"sh", "bash", "dash", "ash", "busybox"}


def _simple_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; & | and parentheses), with the
    ``sh -c '...'`` strings inside them opened up too."""
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return []
    commands, current = [], []
    for token in tokens + [";"]:
        if token and set(token) <= set(";&|()"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    for argv in list(commands):
        for index, word in enumerate(argv[1:-1], start=1):
            if word == "-c" and os.path.basename(argv[index - 1]) in _SHELLS:
                commands += _simple_commands(argv[index + 1])
    return commands


def _after(argv: list[str], program: str) -> list[str] | None:
    """The arguments after `program` in `argv` (``unshare --uts hostname lab`` → [lab])."""
    for index, word in enumerate(argv):
        if os.path.basename(word) == program:
            return argv[index + 1:]
    return None


def _sets_hostname(argv: list[str], hostname: str) -> bool:
    arguments = _after(argv, "hostname")
    return arguments is not None and hostname in arguments


def _reads_hostname(argv: list[str]) -> bool:
    hostname_args = _after(argv, "hostname")
    if hostname_args is not None and not [a for a in hostname_args if not a.startswith("-")]:
        return True
    uname_args = _after(argv, "uname")
    if uname_args is not None and any(a in ("-n", "-a", "--nodename", "--all")
                                      for a in uname_args):
        return True
    cat_args = _after(argv, "cat")
    return cat_args is not None and "/proc/sys/kernel/hostname" in cat_args


prediction(
    "01.3",
    "a shell is PID 1 of a new PID namespace (`unshare --pid --fork sh -c 'kill -9 $$; echo "
    "still here'`). It sends itself SIGKILL, the signal no process can catch. What is printed?",
    {"a": "nothing: SIGKILL always kills, and the namespace dies with its PID 1",
     "b": "still here: the kernel does not deliver SIGKILL to a namespace's PID 1 from inside",
     "c": "an error: kill refuses to signal PID 1"},
    "b",
    {"a": "SIGKILL cannot be caught, but PID 1 of a namespace is special: the kernel drops "
          "signals sent to it from inside its namespace unless it installed a handler, and "
          "SIGKILL cannot have one. Only a process outside (the parent namespace) can kill it.",
     "b": "the kernel protects a namespace's init from its own processes (signals it has no "
          "handler for are dropped), exactly as it protects the real PID 1: a container's PID 1 "
          "can only be SIGKILLed from outside, and when it dies, every process in the namespace "
          "dies with it.",
     "c": "kill sends the signal without complaint (its status is 0); it is the kernel that "
          "silently drops it."},
    concept="PID 1 of a PID namespace is its init: the kernel shields it from signals sent from "
            "inside the namespace that it has no handler for",
    where='the "PID: being process number 1" cell: the shell there is PID 1 ($$ is 1)')
