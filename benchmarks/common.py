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


def needs_root(name: str) -> bool:
    """False, after saying so, when not root: the benchmarks mount, unshare and make cgroups."""
    if os.geteuid() == 0:
        return True
    print(f"{name}: needs root (mounts, namespaces, cgroups)", file=sys.stderr)
    return False
