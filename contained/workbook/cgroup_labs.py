"""Notebook 02's helpers: processes in a cgroup made by hand, and the experiments beyond a hard
limit (CPU weights when groups compete, memory limits that slow a group down instead of killing).

Used by notebook 02 (and 05's ``create_cgroup``), through the `contained.workbook` facade or as
``cgroup_labs``. Making a group and putting a process in it, step by step::

    mkdir /sys/fs/cgroup/lab02                       # create_cgroup prints each of its steps
    echo 33554432 > /sys/fs/cgroup/lab02/memory.max  # v1: .../memory/lab02/memory.limit_in_bytes
    sh -c 'echo $$ > /sys/fs/cgroup/lab02/cgroup.procs; exec CMD'   # start_in_cgroup
    cat /sys/fs/cgroup/lab02/pids.events             # failed_forks: the "max" counter

A hard limit (memory.max, cpu.max, pids.max) is a wall. The other knobs share or push back:

    echo 100 > /sys/fs/cgroup/A/cpu.weight           # v1: echo 1024 > .../cpu/A/cpu.shares
    echo 300 > /sys/fs/cgroup/B/cpu.weight           # v1: echo 3072 > .../cpu/B/cpu.shares
    taskset -c 0 sh -c 'while :; do :; done'         # one busy loop in each, on the same CPU
    echo 16M > /sys/fs/cgroup/C/memory.high          # v2: reclaimed and slowed above, not killed
    echo 16M > /sys/fs/cgroup/memory/C/memory.soft_limit_in_bytes   # v1: a reclaim target only

Like the rest of the workbook's helpers, everything runs as subprocesses (the kernel of a
notebook is threaded: it never forks Python children itself).
"""

import shlex
import subprocess
import sys
import time
from pathlib import Path

from contained.runtime import cgroups

#: cpu.weight's default (v2), and what v1's cpu.shares calls the same weight
DEFAULT_WEIGHT, DEFAULT_SHARES = 100, 1024
BUSY_LOOP = "/bin/busybox sh -c 'while :; do :; done'"


# ---------------------------------------------------------------------------------------------
# Processes in a cgroup made by hand


def cgroup_commands(name: str, limits) -> str:
    """The shell commands that create cgroup `name` with `limits` on this machine (nothing
    is touched: reading the plan needs no privileges)."""

    _, steps = cgroups.Cgroup.plan(name, limits)
    return "\n".join(step.shell for step in steps)


def create_cgroup(name: str, limits):
    """Create cgroup `name` with `limits`, printing each step as the shell command it equals.

    Returns the `contained.runtime.cgroups.Cgroup`; call its ``remove()`` when done.
    """

    group, steps = cgroups.Cgroup.plan(name, limits)
    try:
        for step in steps:
            print(f"$ {step.shell}")
            step.run()
    except BaseException:
        group.remove()
        raise
    return group


def failed_forks(group) -> int:
    """How many times a fork in the group failed because of pids.max (pids.events "max")."""
    for path in group.paths:
        events = path / "pids.events"
        if events.exists():
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
    return 0


def start_in_cgroup(group, command: str) -> subprocess.Popen:
    """Start `command` (bash) as a process that first joins `group` in every cgroup tree.

    The shell writes its own pid into each ``cgroup.procs`` (what ``echo $$ > cgroup.procs``
    does) and only then execs the command, so everything the command forks is inside too. If
    joining fails, the command never runs.
    """
    join = " && ".join(f"echo $$ > {shlex.quote(str(p))}" for p in group.procs_files)
    script = f"set -e; {join}; exec {command}"
    return subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace")


def sample_usage(group, seconds: float, interval: float = 0.1, until=None) -> list[tuple]:
    """Read the group's usage every `interval` seconds: [(elapsed seconds, Usage), ...].

    Stops after `seconds`, or earlier when ``until()`` returns true.
    """
    samples = []
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        samples.append((elapsed, group.usage()))
        if elapsed >= seconds or (until is not None and until()):
            return samples
        time.sleep(interval)


def mean_cpu(samples: list[tuple], skip: float = 0.5) -> float:
    """Average CPUs used after the first `skip` seconds (start-up is noisy)."""
    kept = [(t, u) for t, u in samples if t >= skip] or samples
    (t0, u0), (t1, u1) = kept[0], kept[-1]
    return (u1.cpu_seconds - u0.cpu_seconds) / (t1 - t0) if t1 > t0 else 0.0


# ---------------------------------------------------------------------------------------------
# Beyond a hard limit: weights and soft limits


def controller_dir(group, controller: str) -> Path:
    """The directory of `group` that holds `controller`'s files (v2: the one directory)."""
    where = group.host.where(controller)
    if where is None:
        raise cgroups.ControllerMissing(f"this machine has no {controller} controller")
    return group.dirs["v2" if where == "v2" else controller]


def write(group, controller: str, name: str, value: str) -> None:
    """``echo VALUE > GROUP/NAME``, printed as that command, then done."""
    path = controller_dir(group, controller) / name
    print(f"$ echo {value} > {path}")
    path.write_text(value)


def set_cpu_weight(group, weight: int) -> None:
    """v2 ``cpu.weight`` (1-10000, default 100); v1 ``cpu.shares`` (default 1024), scaled."""
    if group.host.where("cpu") == "v2":
        write(group, "cpu", "cpu.weight", str(weight))
    else:
        write(group, "cpu", "cpu.shares", str(weight * DEFAULT_SHARES // DEFAULT_WEIGHT))


def contention(weights: tuple[int, int] = (100, 300), seconds: float = 3.0, cpu: int = 0,
               interval: float = 0.1) -> dict:
    """Two groups, A and B, with CPU weights `weights`, each running a busy loop pinned to the
    same `cpu` (``taskset -c CPU``): they must share it. Returns both groups' samples."""
    groups, processes = [], []
    try:
        for label, weight in zip("ab", weights, strict=True):
            group = create_quietly(f"lab02-weight-{label}")
            groups.append(group)
            set_cpu_weight(group, weight)
        for group in groups:
            print(f"$ taskset -c {cpu} {BUSY_LOOP}    # in {group.name}")
            processes.append(start_in_cgroup(group, f"taskset -c {cpu} {BUSY_LOOP}"))
        samples: tuple[list, list] = ([], [])
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            for series, group in zip(samples, groups, strict=True):
                series.append((elapsed, group.usage()))
            time.sleep(interval)
        return {"weights": weights, "a": samples[0], "b": samples[1]}
    finally:
        _remove(groups, processes)


def share_of_b(result: dict, skip: float = 0.5) -> float:
    """B's part of the CPU time both groups used after the first `skip` seconds."""
    used_a = mean_cpu(result["a"], skip)
    used_b = mean_cpu(result["b"], skip)
    return used_b / (used_a + used_b) if used_a + used_b else 0.0


def soft_memory_limit(limit: str = "16M", allocate_mb: int = 48, timeout: float = 8.0) -> dict:
    """A group whose memory is only *softly* limited to `limit` asks for `allocate_mb` MB.

    v2: ``memory.high``: above it the kernel reclaims and slows the group down (each return
    to user space waits), it never kills. v1 has no such throttle: ``memory.soft_limit_in_bytes``
    is only where the kernel pushes the group back to when the whole machine runs short.
    """
    group = create_quietly("lab02-soft")
    process = None
    try:
        v2 = group.host.where("memory") == "v2"
        if v2:
            write(group, "memory", "memory.high", limit)
            write(group, "memory", "memory.swap.max", "0")
        else:
            write(group, "memory", "memory.soft_limit_in_bytes", limit)
        program = (f"{sys.executable} -I -c \"import time; start = time.monotonic(); "
                   f"chunks = [b'x' * (1 << 20) for _ in range({allocate_mb})]; "
                   f"print(f'got {allocate_mb} MB in {{time.monotonic() - start:.2f}} s')\"")
        started = time.monotonic()
        process = start_in_cgroup(group, program)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            output = f"still allocating after {timeout:g} s: throttled"
        peak = group.usage().memory_peak
        return {"file": "memory.high" if v2 else "memory.soft_limit_in_bytes",
                "output": output.strip(), "seconds": time.monotonic() - started,
                "peak": peak, "oom_kills": group.oom_kills(),
                "high_events": _memory_event(group, "high") if v2 else None}
    finally:
        _remove([group], [process] if process else [])


def _memory_event(group, key: str) -> int | None:
    events = controller_dir(group, "memory") / "memory.events"
    for line in events.read_text().splitlines() if events.exists() else []:
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


def create_quietly(name: str):
    """A group with no limits, made quietly: its directories are shown in one line (the
    memory cell above printed every step of making one)."""
    group, steps = cgroups.Cgroup.plan(name, cgroups.Limits())
    try:
        for step in steps:
            step.run()
    except BaseException:
        group.remove()
        raise
    print(f"$ mkdir {' '.join(str(path) for path in group.paths)}")
    return group


def _remove(groups: list, processes: list) -> None:
    for group in groups:
        group.remove()  # SIGKILLs what is left in it, then rmdir
    for process in processes:
        process.communicate()
