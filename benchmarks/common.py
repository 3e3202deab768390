"""What the benchmarks share: medians of repeated runs, and the root check."""

import os
import statistics
import sys
import time


def median_ms(action, runs: int) -> float:
    """The median time of `action` in milliseconds, after one untimed run that warms caches
    (page cache, dentries, a runner's first fork)."""
    action()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def interleaved_medians(actions: dict, runs: int, pause: float) -> dict[str, float]:
    """Median milliseconds of each action, the actions taking turns round after round (so a
    machine that slows down for a while slows them all alike), each after `pause` seconds
    of idle. One untimed round first warms caches."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for round_number in range(runs + 1):
        for name, action in actions.items():
            time.sleep(pause)
            start = time.perf_counter()
            action()
            if round_number:
                samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def back_to_back(action, runs: int) -> tuple[float, float]:
    """`action` `runs` times in a row: (wall milliseconds per run, the machine's busy CPU
    milliseconds per run, from /proc/stat, including work left running after the last run
    for up to half a second)."""
    action()
    time.sleep(0.5)
    busy_before, start = _busy_seconds(), time.perf_counter()
    for _ in range(runs):
        action()
    wall = time.perf_counter() - start
    time.sleep(0.5)
    busy = _busy_seconds() - busy_before
    return wall * 1000 / runs, busy * 1000 / runs


def back_to_back_in_turns(actions: dict, runs: int, rounds: int) -> dict[str, tuple[float, float]]:
    """`back_to_back` of each action, `rounds` times, the actions taking turns (the first
    one first, then the last first, and so on): the median wall and CPU milliseconds per run
    of each. The machine drifts, and the turns share the drift: on an ext4 without a journal,
    creating files gets slower for minutes after many were deleted (`benchmarks/unpack.py`),
    and one container's run back to back was seen at 12 ms and 18 ms minutes apart."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in actions}
    names = list(actions)
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else reversed(names):
            samples[name].append(back_to_back(actions[name], runs))
    return {name: (statistics.median(wall for wall, _ in values),
                   statistics.median(busy for _, busy in values))
            for name, values in samples.items()}


def _busy_seconds() -> float:
    """CPU time the whole machine spent not idle since boot (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(value) for value in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def needs_root(name: str) -> bool:
    """False, after saying so, when not root: the benchmarks mount, unshare and make cgroups."""
    if os.geteuid() == 0:
        return True
    print(f"{name}: needs root (mounts, namespaces, cgroups)", file=sys.stderr)
    return False
