"""Exercise checkers: each notebook ends with exercises, and these say whether an answer is right.

Used by every notebook (00-08). A checker looks at the learner's real result where there is one
(a directory, a device file, a running container, an image's digests), not only at a typed
answer, and when something is wrong it says what, in words a beginner understands, and what to
try next. The shell equivalents of what they look at are in each checker's docstring.

Every checker returns a `Feedback`: true when right, printed as one or a few lines. An answer
left as ``None`` gets "Not answered yet", never an error, so a notebook runs top to bottom.

Hints are graduated, one mechanism for every checker (`exercise`): the first wrong answer to
an exercise also names the idea to think about, the second points at the cell or file to look
at, and only an explicit ``exercises.solution("02.1")`` prints the answer. A placeholder is
never itself a right answer.
"""

import functools
import os
import re
import shlex
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contained import isolated
from contained.errors import ContainedError
from contained.runtime import cgroups, namespaces


@dataclass(frozen=True)
class Feedback:
    """A checker's verdict: `ok`, what to tell the learner, and the hint earned so far."""

    ok: bool
    message: str
    answered: bool = True
    hint: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = f"{'✔ Right' if self.ok else '✘ Not yet'}: {self.message}"
        return f"{verdict}\n{self.hint}" if self.hint else verdict

    __repr__ = __str__


def right(message: str) -> Feedback:
    return Feedback(True, message)


def wrong(message: str) -> Feedback:
    return Feedback(False, message)


def _unanswered(how: str) -> Feedback:
    return Feedback(False, f"not answered yet — {how}", answered=False)


# ---------------------------------------------------------------------------------------------
# Graduated hints


@dataclass(frozen=True)
class Hints:
    """What an exercise reveals, one step per wrong answer."""

    concept: str   # first miss: the idea to think about, not the answer
    where: str     # second miss: the cell or file that shows it
    solution: str  # only `solution(key)` prints this


#: Every exercise by key ("NN.M": notebook NN, exercise M), filled in by `exercise`.
EXERCISES: dict[str, Hints] = {}
#: Wrong answers so far in this kernel, by exercise key.
_misses: dict[str, int] = {}


def exercise(key: str, *, concept: str, where: str, solution: str):
    """Make a checker exercise `key`: its wrong answers earn graduated hints.

    The checker itself only judges; this wrapper counts the misses (a "not answered yet" is
    not one) and attaches the hint earned: the concept after the first, the place to look
    after the second, and from then on how to ask for the solution.
    """
    EXERCISES[key] = Hints(concept, where, solution)

    def wrap(checker):
        @functools.wraps(checker)
        def checked(*args, **kwargs) -> Feedback:
            return graded(key, checker(*args, **kwargs))

        checked.exercise = key
        return checked

    return wrap


def graded(key: str, feedback: Feedback) -> Feedback:
    """`feedback` for exercise `key`, with the hint its misses so far have earned."""
    if feedback.ok or not feedback.answered:
        return feedback
    _misses[key] = _misses.get(key, 0) + 1
    return Feedback(False, feedback.message, hint=hint(key, _misses[key]))


def hint(key: str, misses: int) -> str:
    """The hint for exercise `key` after `misses` wrong answers."""
    hints = EXERCISES[key]
    if misses <= 1:
        return f"Hint 1 — the idea: {hints.concept}"
    return (f"Hint 1 — the idea: {hints.concept}\nHint 2 — where to look: {hints.where}\n"
            f"Still stuck? `exercises.solution({key!r})` prints the answer.")


def solution(key: str) -> str:
    """Print (and return) the answer to exercise `key` ("02.1"): only when asked for."""
    key = str(key)
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r}; the exercises are {', '.join(sorted(EXERCISES))}")
    text = f"Exercise {key}, a solution: {EXERCISES[key].solution}"
    print(text)
    return text


def forget_misses() -> None:
    """Start the hints over (a fresh kernel does the same)."""
    _misses.clear()


# ---------------------------------------------------------------------------------------------
# Predict, then run: a question asked *before* the cell that shows the answer


@dataclass(frozen=True)
class Prediction:
    """A multiple-choice question about what the next cell will do, with a reply per choice:
    the wrong replies say what the learner's model of the kernel got wrong."""

    question: str
    choices: dict[str, str]   # letter → the choice
    right: str                # the right letter
    replies: dict[str, str]   # letter → what that choice shows about the idea


PREDICTIONS: dict[str, Prediction] = {}


def prediction(key: str, question: str, choices: dict[str, str], right_choice: str,
               replies: dict[str, str], *, concept: str, where: str) -> Prediction:
    """Register a predict-then-run question as exercise `key` (it earns hints like any other)."""
    found = Prediction(question, choices, right_choice, replies)
    PREDICTIONS[key] = found
    EXERCISES[key] = Hints(concept, where, f"({right_choice}) {choices[right_choice]}. "
                                           f"{replies[right_choice]}")
    return found


def ask(key: str) -> None:
    """Print prediction `key`'s question and its choices (the cell before the experiment)."""
    found = PREDICTIONS[key]
    print(f"{key} Predict: {found.question}")
    for letter, choice in sorted(found.choices.items()):
        print(f"  ({letter}) {choice}")


def check_prediction(key: str, answer: str | None) -> Feedback:
    """Judge the letter the learner predicted for question `key`; the reply explains why, and
    the next cell's output is the proof."""
    found = PREDICTIONS[key]
    if answer is None:
        return _unanswered(f"set answer to one letter, {', '.join(found.choices)}, *before* "
                           "running the next cell")
    letter = str(answer).strip().lower().strip("()")
    if letter not in found.choices:
        return Feedback(False, f"{answer!r} is not one of {', '.join(found.choices)}",
                        answered=False)
    if letter == found.right:
        return right(f"({letter}) — {found.replies[letter]} Run the next cell to see it.")
    return graded(key, wrong(f"({letter}) is not what happens: {found.replies[letter]} Run the "
                             "next cell and compare."))


# ---------------------------------------------------------------------------------------------
# 00 Check your machine


CGROUP_MODES = {"v1", "v2", "hybrid"}


#: check_cgroup_mode's `cgroup2_at` when the notebook does not ask for it (older callers)
_NOT_ASKED = object()


@exercise("00.1",
          concept="cgroup v2 is one tree (a cgroup2 filesystem); v1 is one tree per controller "
                  "(cgroup filesystems named memory, cpu, pids...); hybrid has both at once",
          where="the mount list printed under \"Control groups: v1, v2, or both\" (the "
                "filesystem type is the second column) and the doctor table's cgroups line",
          solution="whatever `stat -fc %T /sys/fs/cgroup` and the mount list say: tmpfs with "
                   "cgroup (v1) directories and a cgroup2 at /sys/fs/cgroup/unified is hybrid "
                   '(cgroup2_at = "/sys/fs/cgroup/unified"); cgroup2fs on /sys/fs/cgroup itself '
                   'is v2 (cgroup2_at = "/sys/fs/cgroup"); no cgroup2 line at all is v1 ("none")')
def check_cgroup_mode(answer: str | None, host: cgroups.CgroupHost | None = None,
                      cgroup2_at=_NOT_ASKED) -> Feedback:
    """Which cgroup layout does this machine have, and where is its cgroup2 tree mounted
    (``"none"`` if nowhere)? The second part is the evidence: one of three words can be
    guessed, a mount point must be read (``stat -fc %T /sys/fs/cgroup``, ``grep cgroup
    /proc/self/mountinfo``)."""
    if answer is None:
        return _unanswered('set answer to "v1", "v2" or "hybrid"')
    given = str(answer).strip().lower().replace("cgroup", "").strip(" -")
    if given not in CGROUP_MODES:
        return wrong(f"{answer!r} is not one of v1, v2, hybrid")
    host = host or cgroups.detect()
    actual = host.mode
    if given == actual and cgroup2_at is not _NOT_ASKED:
        return _cgroup2_evidence(cgroup2_at, host)
    if given == actual:
        return right(f"this machine's cgroups are {actual}.")
    hints = {
        "v2": "a pure v2 machine has one tree, and `cgroup2` mounted on /sys/fs/cgroup itself",
        "v1": "a pure v1 machine has one directory per controller (memory, cpu, pids...) and no "
              "cgroup2 mount at all",
        "hybrid": "a hybrid machine has both: v1 controller directories, and a cgroup2 tree at "
                  "/sys/fs/cgroup/unified",
    }
    return wrong(f"this machine is not {given}: {hints[given]}. Look again at the doctor table's "
                 "cgroups line.")


def _cgroup2_evidence(cgroup2_at, host: cgroups.CgroupHost) -> Feedback:
    """The mode was right: is the mount point of the cgroup2 tree right too?"""
    where = str(host.unified) if host.unified is not None else "none"
    if cgroup2_at is None:
        return _unanswered(f"{host.mode} is right; now set cgroup2_at to where the cgroup2 tree "
                           'is mounted (a path from the mount list), or "none"')
    given = str(cgroup2_at).strip().rstrip("/") or "/"
    if given == where:
        return right(f"this machine's cgroups are {host.mode}, and the mount list proves it: "
                     f"cgroup2 is {'at ' + where if host.unified else 'not mounted'}.")
    if where == "none":
        return wrong(f"{host.mode} is right, but no cgroup2 filesystem is mounted here: the "
                     'answer is "none"')
    return wrong(f"{host.mode} is right, but the cgroup2 tree is not at {given!r}: find the "
                 "line whose type (second column of the mount list) is cgroup2")


# ---------------------------------------------------------------------------------------------
# 01 Namespaces


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
        return _unanswered(f"set answer to a set of kinds, e.g. {example}")
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
        return _unanswered(f"set answer to a shell command that prints {hostname!r} from a new "
                           "UTS namespace")
    if "unshare" not in command:
        return wrong("the command must start a new namespace with `unshare`; without it, "
                     "`hostname ...` would rename the host itself")
    if "uts" not in kinds_in(command):
        return wrong("`unshare` needs --uts (or -u): the hostname lives in the UTS namespace, "
                     "and without a new one you would rename the host")
    missing = _uts_words_feedback(command, hostname)
    if os.geteuid() != 0 and not _user_namespaces():
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


#: The checked command's namespaces: its own mount, UTS, IPC, network and PID namespaces, as
#: root of a user namespace that is the host's `nobody` outside, over a read-only copy of the
#: host's mounts with fresh tmpfs where programs write. The copy is made by real root first, so
#: in the user namespace it is locked: the answer can neither remount it writable nor unmount
#: the tmpfs to reach the host's /tmp.
SANDBOX_USER = 65534
SANDBOX_TMPFS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_SANDBOX_PRELUDE = """
cut -d' ' -f5 /proc/self/mountinfo | while read -r point; do
    case "$point" in /proc|/proc/*) continue ;; esac  # unshare --user writes /proc/self/uid_map
    mount -o remount,bind,ro "$point" 2>/dev/null || true
done
for dir in {tmpfs}; do
    [ -d "$dir" ] && mount -t tmpfs -o mode=1777,size=16m checked "$dir"
done
exec setpriv --reuid={user} --regid={user} --clear-groups -- \
    unshare --user --map-root-user --mount --uts --ipc --net --pid --fork --kill-child -- \
    bash -c "$1"
"""


def run_in_sandbox(command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a learner's shell `command` with bash, as root would, where it cannot change the
    host: ``unshare --mount`` (a private copy of the mounts, made read-only), then as `nobody`
    ``unshare --user --map-root-user --mount --uts --ipc --net --pid --fork``."""
    prelude = _SANDBOX_PRELUDE.format(tmpfs=" ".join(SANDBOX_TMPFS), user=SANDBOX_USER)
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", prelude,
            "sandbox", command]
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "LANG": "C.UTF-8", "HOME": "/"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                          env=environment, stdin=subprocess.DEVNULL)


def _user_namespaces() -> bool:
    from contained import workbook

    return workbook.user_namespaces()


def run_in_user_namespace(command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The rootless `run_in_sandbox`: an unprivileged learner's `command` runs as root of a user
    namespace of its own (``unshare --user --map-root-user --mount --uts --ipc --net --pid
    --fork``), where it can change nothing the learner could not change anyway."""
    argv = ["unshare", "--user", "--map-root-user", "--mount", "--uts", "--ipc", "--net",
            "--pid", "--fork", "--kill-child", "--", "bash", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                          stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# 02 Control groups


#: memparse's suffixes (lib/cmdline.c): what memory.max and memory.limit_in_bytes accept after
#: the digits. Anything else after them ("MB", " M", ".5G") makes the write fail with EINVAL.
_MEMPARSE_SHIFTS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def kernel_memory_bytes(text: str) -> int | None:
    """The bytes the kernel makes of ``echo TEXT > memory.max`` (memparse: digits, then at most
    one of k M G T P E, either case), or None where it answers "Invalid argument". Like the
    kernel (simple_strtoull, base 0), 0x means hexadecimal and a leading 0 octal."""
    found = re.fullmatch(r"(0x[0-9a-f]+|\d+)([kmgtpe]?)", str(text).strip(), re.IGNORECASE)
    if found is None:
        return None
    try:
        number = int(found.group(1), 0) if found.group(1)[:2].lower() == "0x" else (
            int(found.group(1), 8) if found.group(1).startswith("0") else int(found.group(1)))
    except ValueError:
        return None
    return number << _MEMPARSE_SHIFTS[found.group(2).lower()]


@exercise("02.1",
          concept="memory sizes count in powers of 1024 (k = 1024 bytes, M = 1024 k), and "
                  "the kernel reads memory.max with memparse: digits, then at most one letter",
          where="the memory cell of this notebook prints the commands it runs "
                "(`echo ... > memory.limit_in_bytes` or `memory.max`): read the number there",
          solution='32 × 1024 × 1024 = 33554432; the kernel also accepts "32M" or "32768k"')
def check_memory_max(limit: str, answer: int | str | None) -> Feedback:
    """What to write into memory.max (v2) or memory.limit_in_bytes (v1) for `limit`
    (``echo 33554432 > memory.max`` or ``echo 32M > memory.max`` for 32M): judged as the
    kernel reads it."""
    if answer is None:
        return _unanswered(f"set answer to what you would write into memory.max for {limit}")
    expected = cgroups.parse_memory(limit)
    if str(answer).strip() == "max":
        return wrong('"max" means no limit at all: the group could use all the memory there is')
    given = answer if isinstance(answer, int) else kernel_memory_bytes(answer)
    if given is None:
        return wrong(f"the kernel refuses {str(answer).strip()!r} (`echo` would fail with "
                     "\"Invalid argument\"): it takes whole bytes, optionally followed by one "
                     "letter k, M or G — no \"B\", no space, no decimal point")
    if given == expected:
        return right(f"{str(answer).strip()} is {expected} bytes, exactly {limit}: the kernel "
                     "takes the digits or the suffix form alike.")
    number = re.match(r"[\d.]+", limit).group()
    if given == int(float(number) * 1000 ** " kmg".index(limit[-1].lower())):
        return wrong(f"{given} uses 1000 per step; memory sizes use 1024: "
                     f"M means {number} × 1024 × 1024")
    return wrong(f"{answer} is {given} bytes, not {limit}: k = 1024 bytes, M = 1024 k, "
                 "G = 1024 M")


#: The kernel's bounds for a CFS bandwidth period and quota (kernel/sched/core.c:
#: min_cfs_quota_period is 1 ms, max_cfs_quota_period 1 s): cpu.max refuses anything outside.
CPU_PERIOD_MIN_US, CPU_PERIOD_MAX_US = 1000, 1_000_000
CPU_QUOTA_MIN_US = 1000
CPU_PERIOD_DEFAULT_US = 100_000


@exercise("02.2",
          concept="cpu.max is a budget: QUOTA microseconds of CPU time in every PERIOD "
                  "microseconds, so QUOTA / PERIOD is the number of CPUs; the kernel refuses "
                  "a period or quota under 1 ms (1000 µs) or a period over 1 s",
          where='the "Half a CPU" cell: its `cpu.max` line (v1: cpu.cfs_quota_us and '
                "cpu.cfs_period_us) allows 0.5 CPU",
          solution='"25000 100000" (any QUOTA PERIOD with QUOTA / PERIOD = 0.25 and both '
                   'within the kernel\'s bounds, e.g. "250000 1000000")')
def check_cpu_max(cpus: float, answer: str | None) -> Feedback:
    """What goes into cpu.max (v2) for `cpus` CPUs (``echo "50000 100000" > cpu.max``), as
    the kernel would take it: one number keeps the period (default 100000 µs)."""
    if answer is None:
        return _unanswered(f'set answer to the cpu.max line for {cpus} CPUs: "QUOTA PERIOD"')
    words = str(answer).split()
    if words[:1] == ["max"]:
        return wrong('"max" means no quota at all: the group may use every CPU')
    if len(words) not in (1, 2) or not all(w.isdigit() for w in words):
        return wrong('cpu.max holds two numbers: "QUOTA PERIOD", both in microseconds '
                     '(e.g. "25000 100000")')
    quota = int(words[0])
    period = int(words[1]) if len(words) == 2 else CPU_PERIOD_DEFAULT_US
    if not CPU_PERIOD_MIN_US <= period <= CPU_PERIOD_MAX_US:
        return wrong(f"the kernel refuses a period of {period} µs (\"Invalid argument\"): it "
                     f"must be between {CPU_PERIOD_MIN_US} µs (1 ms) and {CPU_PERIOD_MAX_US} µs "
                     "(1 s)")
    if quota < CPU_QUOTA_MIN_US:
        return wrong(f"the kernel refuses a quota of {quota} µs (\"Invalid argument\"): less than "
                     "1 ms per period is too fine for the scheduler to enforce. Scale both "
                     "numbers up")
    if abs(quota / period - cpus) < 1e-9:
        if len(words) == 1:
            return right(f"{quota} µs with the period left at its default {period} µs is {cpus} "
                         "CPUs (writing both numbers says so explicitly).")
        return right(f"{quota} µs of CPU time in every {period} µs window is {cpus} CPUs.")
    if abs(period / quota - cpus) < 1e-9:
        return wrong("quota and period are swapped: the first number is the CPU time allowed, "
                     "the second the window it is counted over")
    return wrong(f"{quota}/{period} = {quota / period:g} CPUs, not {cpus}: the group may use "
                 "QUOTA microseconds of CPU in every PERIOD microseconds")


def _fraction(answer) -> float | None:
    """0.75, "0.75", "3/4" or "75%" as a number; None when it is none of those."""
    text = str(answer).strip().replace(" ", "")
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100
        if "/" in text:
            top, bottom = text.split("/", 1)
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


@exercise("02.3",
          concept="cpu.weight (v1: cpu.shares) only matters when groups compete for the same "
                  "CPU; then each gets its weight divided by the sum of the weights",
          where='the "Two containers, one CPU" cell: its weights and the shares it measured',
          solution="300 / (100 + 300) = 0.75; with the CPU idle, either group may still use all "
                   "of it")
def check_cpu_share(weights: tuple[int, int], answer) -> Feedback:
    """Two groups with cpu.weight `weights` (A, B) both busy on one CPU: what fraction does B
    get? (``echo 100 > A/cpu.weight; echo 300 > B/cpu.weight``; v1: cpu.shares 1024 and 3072.)"""
    if answer is None:
        return _unanswered("set answer to B's fraction of the CPU, e.g. 0.5")
    given = _fraction(answer)
    if given is None or given < 0:
        return wrong(f"{answer!r} is not a fraction: write e.g. 0.5, 1/2 or 50%")
    a, b = weights
    expected = b / (a + b)
    if abs(given - expected) < 0.01:
        return right(f"B gets {b}/({a}+{b}) = {expected:.2f} of the CPU while both are busy; a "
                     "weight is not a limit, so alone either may use all of it.")
    if abs(given - a / (a + b)) < 0.01:
        return wrong(f"{given:g} is A's share: the bigger weight gets the bigger share")
    if abs(given - b / a) < 0.01:
        return wrong(f"{given:g} is B's weight divided by A's, how many times more B gets; the "
                     "question asks for B's part of the whole CPU")
    if given > 1:
        return wrong("a fraction of one CPU is at most 1")
    return wrong(f"{given:g} is not B's share: weights are relative, B gets its weight out of "
                 "the sum of both")


prediction(
    "02.4",
    "a group has only a *soft* memory limit of 16M (v2 memory.high, v1 "
    "memory.soft_limit_in_bytes), no memory.max. A program in it asks for 48 MB. What happens?",
    {"a": "it is OOM-killed at 16 MB, like under memory.max",
     "c": "it gets its 48 MB and is never killed (on v2, slowed down above 16 MB)",
     "b": "its allocation fails: Python raises MemoryError at 16 MB"},
    "c",
    {"a": "only memory.max (v1: memory.limit_in_bytes) makes the OOM killer act; a soft limit "
          "never kills.",
     "c": "memory.high makes the kernel reclaim and throttle the group, never kill it; v1's "
          "soft limit only matters when the whole machine runs short, so here it does nothing.",
     "b": "the kernel does not refuse allocations at a cgroup limit: memory is charged when it "
          "is first touched, and a hard limit answers with reclaim, then the OOM killer."},
    concept="a soft limit (memory.high) pushes back with reclaim and throttling; only "
            "memory.max kills",
    where='the "memory.high: throttled, not killed" text, and the first cell\'s OOM kill for '
          "comparison")


# ---------------------------------------------------------------------------------------------
# 03 Overlay filesystems


def is_whiteout(path: Path) -> bool:
    """An overlayfs whiteout: a character device with device number 0:0."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


@exercise("03.1",
          concept="deleting a lower file through the overlay leaves a whiteout (character "
                  "device 0:0) in upper; lower never changes",
          where='the "Deleting: whiteouts" cell (mount, `rm merged/...`, unmount) and the '
                "`upper` table after it",
          solution="mkdir -p ex03/lower ex03/upper ex03/work ex03/merged; echo hi > "
                   "ex03/lower/notes.txt; mount -t overlay overlay -o lowerdir=ex03/lower,"
                   "upperdir=ex03/upper,workdir=ex03/work ex03/merged; rm ex03/merged/notes.txt;"
                   " umount ex03/merged")
def check_whiteout(lab: str | Path, name: str) -> Feedback:
    """`name` deleted through the overlay at LAB/merged: a whiteout in LAB/upper, the file
    still in LAB/lower (``ls -l upper/NAME`` shows ``c--------- 0, 0``)."""
    lab = Path(lab)
    lower, upper = lab / "lower" / name, lab / "upper" / name
    if not (lab / "upper").is_dir():
        return _unanswered(f"{lab / 'upper'} does not exist yet: make lower/, upper/, work/, "
                           "merged/ in it and mount the overlay first")
    if not lower.exists():
        return wrong(f"{lower} is missing: the file must exist in the lower layer (and stay "
                     "there) — create it before mounting")
    if is_whiteout(upper):
        if not (lab / "work" / "work").is_dir():
            # overlayfs makes work/work at every mount: without it, no overlay ever used this
            # upper, and the whiteout was made by hand (mknod upper/NAME c 0 0).
            return wrong(f"upper/{name} is a whiteout, but {lab / 'work'} was never used by an "
                         "overlay mount (overlayfs makes work/work when it mounts): delete the "
                         "file through merged/, don't mknod the whiteout yourself")
        if (lab / "merged" / name).exists() and _mounted(lab / "merged"):
            return wrong(f"the whiteout is there but merged/{name} is still visible: was the "
                         "overlay remounted with another upper?")
        return right(f"upper/{name} is a whiteout (character device 0:0) and lower/{name} is "
                     "untouched: the layer below was never changed.")
    if upper.exists():
        return wrong(f"upper/{name} is a regular {('directory' if upper.is_dir() else 'file')}, "
                     f"not a whiteout: delete it through merged/ (`rm merged/{name}`), never by "
                     "writing into upper/ directly")
    return wrong(f"upper/{name} does not exist: delete the file through the overlay "
                 f"(`rm merged/{name}` while it is mounted), not in lower/")


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


prediction(
    "03.2",
    "lower/big.bin is 64 MiB. Through the overlay you append ONE line to merged/big.bin. How "
    "big is upper/big.bin afterwards?",
    {"b": "a few bytes: upper keeps only the line you added",
     "a": "64 MiB and a line: the whole file is copied up before the first write",
     "c": "nothing is in upper: the change is written into lower/big.bin"},
    "a",
    {"b": "overlayfs works on whole files, not blocks: the first write to a lower file copies "
          "all of it up into upper, and only then changes the copy.",
     "a": "copy-up copies the whole file at the first write (open for writing, even for one "
          "byte, or chmod/chown); later writes go to the copy. A container that touches a big "
          "file of its image pays for all of it, in time and in disk.",
     "c": "lower is never written: that is the whole point of the layers (notebook 04 shares "
          "them between images)."},
    concept="copy-up: overlayfs copies a lower file into upper, whole, before its first change",
    where='the "Copy-up" cell: compare upper/hello.txt and lower/hello.txt')

prediction(
    "03.3",
    "you mount the same overlay, but with work/ on a tmpfs of its own (a different filesystem "
    "from upper/). What happens?",
    {"a": "it mounts, and copy-ups are just slower",
     "b": "it mounts, and the changes go into work/ instead of upper/",
     "c": "the mount is refused: the kernel logs \"workdir and upperdir must reside under the "
          "same mount\""},
    "c",
    {"a": "a copy-up is prepared in work/ and then *renamed* into upper/, so that nobody ever "
          "sees a half-copied file. rename(2) cannot cross filesystems, so the kernel checks "
          "this at mount time and refuses.",
     "b": "work/ is only scratch space: files pass through it on their way into upper/.",
     "c": "a copy-up is prepared in work/ and then renamed into upper/ in one atomic step, so "
          "no one ever sees a half-copied file; a rename cannot cross filesystems, so the "
          "kernel refuses the mount up front (EINVAL; the reason is in the kernel log)."},
    concept="work/ is where a copy-up is prepared before it is renamed into upper/, atomically",
    where="the overlay's mount line in any cell: upperdir= and workdir= are siblings on one "
          "filesystem")


# ---------------------------------------------------------------------------------------------
# 04 Images


@exercise("04.1",
          concept="every blob's file name is the sha256 of its own bytes; a layer blob is the "
                  "compressed tar, and the manifest lists it under \"layers\"",
          where="the cells \"Walking the layout\" (the manifest) and \"Verifying digests with "
                "sha256sum\"",
          solution='answer = manifest["layers"][0]["digest"] (busybox has one layer)')
def check_layer_digest(layout: str | Path, answer: str | None, tag: str | None = None
                       ) -> Feedback:
    """The digest of the image's (largest) layer blob, as ``sha256sum blobs/sha256/*`` shows,
    told apart from the other digests a learner can find."""
    import gzip
    import hashlib
    import json

    from contained.images import oci

    if answer is None:
        return _unanswered('set answer to the layer blob\'s digest, "sha256:…"')
    given = str(answer).strip().lower()
    if re.fullmatch(r"[0-9a-f]{64}", given):
        given = "sha256:" + given
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", given):
        return wrong('a digest looks like "sha256:" followed by 64 hex digits (sha256sum prints '
                     "the 64 digits)")
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    entry = next((m for m in index["manifests"] if tag is None or m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == tag), None)
    if entry is None:
        return wrong(f"{layout} has no image tagged {tag!r}")
    manifest = json.loads(oci.blob_path(layout, entry["digest"]).read_bytes())
    largest = max(manifest["layers"], key=lambda layer: layer["size"])
    if given == largest["digest"]:
        return right("that is the layer blob's name, and sha256 of its bytes: the blob "
                     "verifies.")
    if given in (layer["digest"] for layer in manifest["layers"]):
        return wrong("that is a layer, but not the largest one: compare the sizes in the "
                     "manifest")
    if given == entry["digest"]:
        return wrong("that is the manifest's digest (from index.json); the layers are listed "
                     "inside the manifest")
    if given == manifest["config"]["digest"]:
        return wrong("that is the config blob's digest; the layers are in the manifest's "
                     '"layers" list')
    blob = oci.blob_path(layout, largest["digest"])
    with gzip.open(blob) if largest["mediaType"].endswith("gzip") else open(blob, "rb") as f:
        uncompressed = hashlib.sha256()
        while chunk := f.read(1 << 20):
            uncompressed.update(chunk)
    if given == "sha256:" + uncompressed.hexdigest():
        return wrong("that is the diff_id: the sha256 of the *uncompressed* tar (listed in the "
                     "config). The blob's name is the sha256 of the compressed bytes on disk")
    return wrong("that digest is not in this image: run `sha256sum` on the largest file in "
                 "blobs/sha256/")


@exercise("04.2",
          concept="a blob is named by the digest of its bytes, so the same layer in two images is "
                  "one blob, listed by both manifests",
          where="the cell under \"Two images, one base layer\": print each manifest's "
                "\"layers\" in full (workbook.read_blob_json)",
          solution="the first layer of both manifests: "
                   "set(layers_of['latest']) & set(layers_of['other'])")
def check_shared_layer(layout: str | Path, answer: str | None) -> Feedback:
    """The layer digest every image of `layout` lists (``jq '.layers[].digest'`` of each
    manifest, then the ones in common)."""
    import json

    from contained.images import oci

    if answer is None:
        return _unanswered('set answer to the shared layer\'s digest, "sha256:…"')
    given = str(answer).strip().lower()
    if re.fullmatch(r"[0-9a-f]{64}", given):
        given = "sha256:" + given
    layout = Path(layout)
    manifests = [json.loads(oci.blob_path(layout, m["digest"]).read_bytes())
                 for m in json.loads((layout / "index.json").read_text())["manifests"]]
    if len(manifests) < 2:
        return wrong(f"{layout} holds {len(manifests)} image: run the cell that builds "
                     "multi:other first")
    layer_sets = [{layer["digest"] for layer in m["layers"]} for m in manifests]
    shared = set.intersection(*layer_sets)
    if given in shared:
        return right("both manifests list that blob, and the layout stores it once: a second "
                     "image on the same base costs only its own layers.")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", given):
        return wrong('a digest looks like "sha256:" followed by 64 hex digits; the cell shows '
                     "only the first 12, the manifests have them in full")
    if any(given in layers for layers in layer_sets):
        return wrong("that layer belongs to one image only: compare the two manifests' layer "
                     "lists")
    return wrong("no manifest of this layout lists that digest as a layer (a manifest's or "
                 "config's digest is not a layer)")


# ---------------------------------------------------------------------------------------------
# 05 A container by hand


@exercise("05.1",
          concept="a device file is a name for a (major, minor) pair the kernel knows: /dev/null "
                  "is character device 1:3; writing to a missing one made a regular file",
          where="\"/dev is empty\" in notebook 05, and `ls -l /dev/null` on the host",
          solution="rm -f root/dev/null && mknod -m 666 root/dev/null c 1 3")
def check_dev_null(root: str | Path) -> Feedback:
    """ROOT/dev/null is the real null device, character 1:3 (``ls -l root/dev/null`` shows
    ``crw-rw-rw- 1, 3``; ``mknod -m 666 root/dev/null c 1 3`` makes it)."""
    path = Path(root) / "dev" / "null"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return wrong(f"{path} does not exist: make it with `mknod -m 666 {path} c 1 3`")
    if stat.S_ISREG(info.st_mode):
        return wrong(f"{path} is a regular file ({info.st_size} bytes): a program wrote to "
                     "/dev/null while /dev was empty, so the shell created a file. Remove it, "
                     f"then `mknod -m 666 {path} c 1 3`")
    if stat.S_ISLNK(info.st_mode):
        return wrong(f"{path} is a symlink: a link could point anywhere on the host; make a "
                     "device node instead (mknod ... c 1 3)")
    if not stat.S_ISCHR(info.st_mode):
        return wrong(f"{path} is not a character device: use `mknod ... c 1 3`")
    numbers = (os.major(info.st_rdev), os.minor(info.st_rdev))
    if numbers != (1, 3):
        return wrong(f"{path} is device {numbers[0]}:{numbers[1]}, not 1:3 (null). 1:5 is "
                     "zero, 1:8 random, 1:9 urandom")
    if info.st_mode & 0o666 != 0o666:
        return wrong(f"{path} is the null device but mode {oct(info.st_mode & 0o777)}: "
                     "everyone must be able to write to it (chmod 666)")
    return right(f"{path} is the null device (character 1:3, mode 666).")


@exercise("05.2",
          concept="a container has no kernel of its own: uname asks the one kernel there is",
          where="the output of step 5 (\"uname -r inside:\") and the cell after it",
          solution="answer = os.uname().release")
def check_kernel_release(answer: str | None) -> Feedback:
    """What ``uname -r`` prints inside the container: the host's kernel."""
    if answer is None:
        return _unanswered("set answer to what `uname -r` printed inside the container")
    host = os.uname().release
    if str(answer).strip() == host:
        return right("containers share the host's kernel, so `uname -r` is the same inside "
                     "and outside; only the hostname (UTS namespace) can differ.")
    return wrong(f"{answer!r} is not what the container sees: a container has no kernel of its "
                 "own, so it reports the host's. Run `uname -r` in both and compare")


# ---------------------------------------------------------------------------------------------
# 06 The %%container magic

#: What a checker reads of a learner's file in a container: an answer is a line of text, and a
#: file linked to /dev/zero must not fill the host's memory or disk.
CHECKED_FILE_LIMIT = 4 << 20


@exercise("06.1",
          concept="a throwaway container's files go with it; a named one (--name) keeps its "
                  "upper directory, and later cells with the same name run inside it",
          where="\"A named container: files and processes persist\" in notebook 06",
          solution="%%container busybox --name ex06\necho 42 > /answer.txt")
def check_container_file(name: str, path: str, content: str) -> Feedback:
    """A running named container `name` has a file `path` containing `content`
    (``contained exec NAME cat PATH``)."""
    from contained.runtime import container

    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name!r}: start one with "
                     f"`%%container busybox --name {name}`")
    if not found.running:
        return wrong(f"container {name} exists but is not running: remove it "
                     f"(`%container rm {name}`) and start it again")
    status, data = _read_in_container(name, path, CHECKED_FILE_LIMIT)
    if data is None:
        return wrong(f"{path} in {name} is bigger than {CHECKED_FILE_LIMIT >> 10} KiB (only that "
                     f"much was read): an answer is a line of text; is it a link to a device "
                     f"such as /dev/zero?")
    if status != 0:
        return wrong(f"{path} does not exist in {name}: was the file made in a throwaway "
                     f"container (a cell without --name {name})? Throwaway files vanish")
    text = data.decode(errors="replace")
    if text.strip() != content:
        return wrong(f"{path} contains {text.strip()!r}, not {content!r}")
    return right(f"{path} in {name} says {content!r}; it will stay until `%container rm "
                 f"{name}`.")


def _read_in_container(name: str, path: str, limit: int) -> tuple[int | None, bytes | None]:
    """``contained exec NAME cat PATH``, keeping at most `limit` bytes on the host: (status,
    content), content None when there was more (the command is then killed, unread)."""
    from contained.runtime import container

    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        execution = container.start_exec(name, ["cat", path], stdin=null, stdout=write_end,
                                          stderr=null)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # PID 1 holds its own copy: ours must go for end of file to come
        os.close(null)
    with open(read_end, "rb") as pipe:
        data = pipe.read(limit + 1)  # up to limit + 1 bytes, or end of file
        if len(data) > limit:
            execution.kill()
            execution.wait()
            return None, None
    return execution.wait().status, data


@exercise("06.2",
          concept="limits are set when a container is created: they are its cgroup's files",
          where="\"Limits\" in notebook 06: the options are contained run's",
          solution="%%container busybox --name ex06-small --memory 24M\ntrue")
def check_memory_limit(name: str, limit: str) -> Feedback:
    """Container `name` was created with memory limit `limit` (``contained inspect NAME``)."""
    from contained.runtime import container

    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name!r}: create it with "
                     f"`%%container busybox --name {name} --memory {limit}`")
    expected = cgroups.parse_memory(limit)
    actual = found.spec.memory if found.spec else None
    if actual == expected:
        return right(f"{name} may use at most {limit} ({expected} bytes).")
    if actual is None:
        return wrong(f"{name} has no memory limit: limits are set when a container is created; "
                     f"remove it and create it again with --memory {limit}")
    return wrong(f"{name}'s limit is {actual} bytes, not {limit}: remove it and create it "
                 f"again with --memory {limit}")


@exercise("06.3",
          concept="an orphan is re-parented to PID 1, and a process that exits stays a zombie "
                  "until its parent calls wait()",
          where="notebook 06, \"PID 1\": the cell that lists PID 1's children from the host, "
                "and the same three orphans under contained-init",
          solution="answer = (5, 0): sleep never calls wait(), contained-init reaps them all")
def check_zombies(answer) -> Feedback:
    """Zombies left by 5 exited orphans under a PID 1 that never waits, and under an init."""
    if answer is None:
        return _unanswered("set answer to two numbers, e.g. (2, 1)")
    try:
        under_sleep, under_init = (int(n) for n in answer)
    except (TypeError, ValueError):
        return wrong(f"{answer!r} is not two numbers: write (zombies under sleep, zombies "
                     "under contained-init)")
    if under_sleep != 5:
        return wrong(f"under sleep: {under_sleep}? Every orphan becomes PID 1's child, and "
                     "each one that exits stays a zombie until PID 1 waits for it; sleep never "
                     "does")
    if under_init != 0:
        return wrong(f"under contained-init: {under_init}? It calls waitpid(-1) whenever a "
                     "child exits, orphans included")
    return right("5 zombies under sleep, none under contained-init: that is why containers "
                 "get an init (docker run --init, podman's catatonit, contained-init).")


# ---------------------------------------------------------------------------------------------
# 07 Safety


@exercise("07.1",
          concept="an unpacker is attacked through the names and link targets of a layer's "
                  "entries, not through its bytes: a valid tar whose entry tries to leave the "
                  "image's directory",
          where="section 1 of notebook 07: each `try_layers(...)` cell is one attack, and "
                "`workbook.tar_layer` builds the tar",
          solution='answer = workbook.tar_layer(("../escaped.txt", "file", b"out")), or a '
                   'hardlink to ../../etc/passwd')
def check_layer_refused(tar_bytes: bytes | None) -> Feedback:
    """A layer (uncompressed tar bytes) the unpacker must refuse *for one of its entries*:
    unpack it into a scratch directory with `contained.images.unpack`, and check nothing
    escaped. Bytes that are not a tar at all (random, empty, cut short) are refused too, but
    as a broken download, not as an attack: they do not count."""
    from contained.images import build, oci, unpack

    if tar_bytes is None:
        return _unanswered("set answer to the bytes of a tar layer you built with tarfile")
    if not _is_tar_with_entries(tar_bytes):
        return wrong("that is not a tar archive with entries (random, empty or cut-short "
                     "bytes): the unpacker refuses it as a broken download, before any entry "
                     "is read. An attack is a valid tar whose entry tries to get out")
    with tempfile.TemporaryDirectory(prefix="contained-exercise-") as scratch:
        scratch = Path(scratch)
        layout, dest, outside = scratch / "layout", scratch / "box" / "rootfs", scratch / "box"
        dest.mkdir(parents=True)
        built = build.write_layer(layout, tar_bytes, compress=False)
        blob = oci.blob_path(layout, built.descriptor.digest)
        try:
            unpack.unpack_layer(blob, built.descriptor, built.diff_id, dest)
        except ContainedError as error:
            escaped = [p.name for p in outside.iterdir() if p.name != "rootfs"]
            if escaped:
                return wrong(f"refused, but {escaped} was written outside first: report this "
                             "as a bug")
            if isinstance(error, (unpack.LayerTruncated, unpack.LayerCorrupt)):
                return wrong(f"refused as a broken tar, not for what an entry does: {error}")
            return right(f"the unpacker refused it: {error}")
        escaped = [p.name for p in outside.iterdir() if p.name != "rootfs"]
        if escaped:
            return wrong(f"{escaped} escaped the layer's directory: report this as a bug")
        return wrong("this layer unpacked cleanly: everything in it stays inside the image. "
                     "Try a name with ../ in it, an absolute symlink followed by a file under "
                     "it, or a hardlink to /etc/passwd")


def _is_tar_with_entries(data: bytes) -> bool:
    """Does `data` parse as a tar archive holding at least one entry (``tar -t`` lists one)?"""
    import io
    import tarfile

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()  # reads to the end: a cut-short tar fails here
    except (tarfile.TarError, EOFError, OSError):
        return False
    return bool(members)


#: The walls that together keep root in a container off the host's files, with the words a
#: learner may use for each.
BOUNDARY_WALLS = {
    "pivot_root": {"pivot_root", "pivot root", "pivot-root", "pivotroot"},
    "capabilities": {"capabilities", "dropped capabilities", "drop capabilities", "caps",
                     "capability"},
    "device rules": {"device rules", "devices", "device cgroup", "devices cgroup", "nodev",
                     "device"},
    "seccomp": {"seccomp", "seccomp filter", "seccomp profile"},
}
_WALL_MISSING = {
    "pivot_root": "without pivot_root the host's tree is still mounted above / and chroot "
                  "climbs out of it (you saw it)",
    "capabilities": "with every capability, root can mount, load modules, and mknod the host's "
                    "disk and mount it: capabilities must be dropped",
    "device rules": "root keeps CAP_MKNOD (Docker grants it): without device rules (a devices "
                    "cgroup, nodev mounts) a node it makes for the host's disk opens",
    "seccomp": "capabilities do not cover every system call: keyctl, bpf, unshare of a user "
               "namespace... need no capability, and seccomp is what refuses them",
}


@exercise("07.2",
          concept="one wall is not enough: each one closes a different door (the host's "
                  "mounts, privileged operations, device nodes, system calls nobody needs)",
          where="section 3 of notebook 07, \"What root in a container can still do\": the "
                "same probes by hand and in `contained run`, side by side",
          solution='answer = {"pivot_root", "capabilities", "device rules", "seccomp"}')
def check_boundary(answer) -> Feedback:
    """Which walls, together, keep root in the container off the host: a set of names."""
    if answer is None:
        return _unanswered('set answer to a set of names, e.g. {"pivot_root", ...}')
    given = {answer} if isinstance(answer, str) else set(answer)
    words = {str(word).strip().lower().replace("_", " ") for word in given}
    chosen, unknown = set(), []
    for word in words:
        wall = next((name for name, aliases in BOUNDARY_WALLS.items()
                     if word in {a.replace("_", " ") for a in aliases}), None)
        if wall:
            chosen.add(wall)
        else:
            unknown.append(word)
    if "chroot" in unknown:
        return wrong("chroot only changes where '/' starts for path lookups; the host's root "
                     "is still mounted, and root can chroot again and climb out (you saw it)")
    if unknown:
        return wrong(f"{', '.join(sorted(unknown))}: not a wall between the container's root "
                     "and the host (the walls are in notebook 07's section 3)")
    missing = [wall for wall in BOUNDARY_WALLS if wall not in chosen]
    if missing:
        return wrong(_WALL_MISSING[missing[0]])
    return right("pivot_root removes the host's tree, dropped capabilities take away mount "
                 "and its like, device rules make a device node useless, and seccomp refuses "
                 "the system calls left over. Each alone leaves a door open.")


# --- 08 networking -------------------------------------------------------------------------

@exercise("08.1",
          concept="a veth pair is a cable with two ends: one end in each namespace, an address "
                  "on each, both up",
          where="part 1 of notebook 08: the cells that made lab08-b and its cable",
          solution="ip netns add lab08-c; ip -n lab08-a link add veth-ac type veth peer name "
                   "veth-c netns lab08-c; ip -n lab08-a addr add 10.200.9.1/24 dev veth-ac; "
                   "ip -n lab08-c addr add 10.200.9.2/24 dev veth-c; ip -n lab08-a link set "
                   "veth-ac up; ip -n lab08-c link set veth-c up")
def check_third_namespace(namespace: str = "lab08-c", peer: str = "lab08-a",
                          address: str = "10.200.9.2", gateway: str = "10.200.9.1"):
    """`namespace` has `address` and reaches `gateway` in `peer` over a veth pair
    (``ip -n NS -j addr``, ``ip netns exec NS busybox ping -c 1 GATEWAY``)."""
    import json

    from contained import workbook

    if not workbook.privileged():
        return wrong("network namespaces need root; run this notebook as root")
    if namespace not in workbook.sh_output("ip netns list", check=False).split():
        return wrong(f"there is no namespace {namespace}: `ip netns add {namespace}`")
    links = json.loads(workbook.sh_output(f"ip -n {namespace} -j addr show") or "[]")
    mine = [link for link in links if any(a.get("local") == address for a in link["addr_info"])]
    if not mine:
        return wrong(f"no interface in {namespace} has {address}: "
                               f"`ip -n {namespace} addr add {address}/24 dev ...`")
    if mine[0].get("link_type") != "ether" or "UP" not in mine[0]["flags"]:
        return wrong(f"{mine[0]['ifname']} in {namespace} is not an Ethernet (veth) "
                               f"interface that is up: `ip -n {namespace} link set "
                               f"{mine[0]['ifname']} up`")
    if not _veth_peers(namespace, mine[0], peer, gateway):
        return wrong(f"the other end of {mine[0]['ifname']} is not the interface with {gateway} "
                     f"in {peer}: the cable must go to {peer} (`ip link add ... peer name "
                     f"... netns {peer}`, then `ip -n {peer} addr add {gateway}/24 ...`)")
    ping = f"ip netns exec {namespace} busybox ping -c 1 -W 1 -I {mine[0]['ifname']} {gateway}"
    if workbook.sh_output(f"{ping} >/dev/null 2>&1 && echo ok", check=False) != "ok":
        return wrong(f"{namespace} cannot ping {gateway}: is the other end in {peer} "
                               f"addressed and up? (`ip -n {peer} -br addr`)")
    return right(f"{namespace} ({address}) reaches {gateway} in {peer} over its own "
                           "cable.")



def _veth_peers(namespace: str, end: dict, peer: str, gateway: str) -> bool:
    """Is `end` (an interface of `namespace`, from ``ip -j addr``) one end of a veth pair whose
    other end is the interface holding `gateway` in `peer`? Each end names the other by its
    index in the other's namespace (``link_index``, the ``@ifN`` of ``ip link``)."""
    import json

    from contained import workbook

    links = json.loads(workbook.sh_output(f"ip -n {peer} -j addr show", check=False) or "[]")
    theirs = [link for link in links if any(a.get("local") == gateway for a in link["addr_info"])]
    return any(link.get("link_index") == end.get("ifindex")
               and end.get("link_index") == link.get("ifindex")
               and "link_netnsid" in link and "link_netnsid" in end for link in theirs)


@exercise("08.2",
          concept="-p HOST_IP:PORT:CONTAINER_PORT is a DNAT rule from the host's port to the "
                  "container's address; --net bridge puts its name in the others' /etc/hosts",
          where="the cell that starts web08 in notebook 08",
          solution="workbook.contained('run -d --name api08 --net bridge -p 127.0.0.1:8090:80 "
                   "busybox sh -c \"mkdir -p /www && echo hello from api08 > /www/index.html "
                   "&& exec httpd -f -p 80 -h /www\"')")
def check_published(name: str = "api08", port: int = 8090, text: str = "hello from api08"):
    """`name` serves `text` on 127.0.0.1:`port` and, by name, to the other containers
    (``wget -q -O - http://127.0.0.1:PORT/``, ``contained exec web08 wget -q -O - http://NAME/``)."""
    from contained import workbook
    from contained.runtime import container

    if not workbook.privileged():
        return wrong("bridged containers need root; run this notebook as root")
    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name}: `contained run -d --name "
                               f"{name} --net bridge -p 127.0.0.1:{port}:80 busybox sh -c ...`")
    if found.spec.net != "bridge" or not found.running:
        return wrong(f"{name} must be running with --net bridge: `contained rm -f "
                               f"{name}` and start it again")
    try:
        page = workbook.fetch(f"http://127.0.0.1:{port}/", wait=3).strip()
    except OSError:
        return wrong(f"nothing answers on 127.0.0.1:{port}: did you publish it "
                               f"with -p 127.0.0.1:{port}:80, and is httpd running in {name}?")
    if page != text:
        return wrong(f"127.0.0.1:{port} says {page!r}, not {text!r}")
    contained = isolated.shell_words("contained.cli")
    by_name = workbook.sh_output(f"{contained} exec web08 wget -q -O - http://{name}/",
                                 check=False)
    if by_name != text:
        return wrong(f"web08 cannot fetch http://{name}/ by name: is {name} on the "
                               "bridge (--net bridge) and is web08 still running?")
    return right(f"{name} serves {text!r} on 127.0.0.1:{port} and, by name, to "
                           "web08.")

