"""What a container may use and what it uses: limits as `contained run --memory 32M --cpus 0.5
--pids-limit 64` gives them, checked as Docker checks them, and readings of a group's usage.

Part of `contained.runtime.cgroups` (notebook 02); the same numbers whichever cgroup version
the host has.
"""

import math
import os
import re

from contained.errors import ContainedError
from contained.records import record
from contained.runtime.cgroups.files import ControllerMissing

#: Docker's floor: below this a container cannot even start its shell
MIN_MEMORY = 6 * 1024 * 1024
#: the CFS accounting period; a quota of cpus * period per period gives `cpus` CPUs
CPU_PERIOD_US = 100_000
#: the smallest quota the kernel accepts (1 ms per period, so 0.01 CPUs)
MIN_CPUS = 0.01
#: a memory limit above this many times the machine's memory is a typo, not a limit
MAX_MEMORY_FACTOR = 1024
#: podman's default process limit, for every container that has a cgroup (docker's is none)
DEFAULT_PIDS = 2048
#: the kernel's most processes (PID_MAX_LIMIT on 64-bit): pids.max refuses more
MAX_PIDS = 4 * 1024 * 1024

#: v1 reports "no memory limit" as a huge page-aligned number (PAGE_COUNTER_MAX pages)
V1_UNLIMITED = 1 << 62

_MEMORY = re.compile(r"(\d+(?:\.\d+)?) ?([kmg]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class BadLimit(ContainedError):
    """A memory, CPU or pids limit that cannot be parsed or is out of range."""


@record
class Limits:
    """What a container may use; None means unlimited."""

    memory: int | None = None  # bytes
    cpus: float | None = None  # CPUs' worth of time, e.g. 0.5
    pids: int | None = None  # processes and threads


@record
class Usage:
    """One cheap reading of what a group uses now, with its limits (None: unlimited)."""

    memory: int  # bytes charged to the group (0 if the host has no memory controller)
    memory_peak: int | None  # the highest `memory` so far, if the kernel keeps it
    cpu_seconds: float  # CPU time used by every process that was ever in the group
    pids: int  # processes and threads in the group now
    memory_limit: int | None
    cpu_limit: float | None
    pids_limit: int | None


def cpu_rates(samples: list[tuple[float, Usage]]) -> tuple[list[float], list[float]]:
    """CPUs used between consecutive (seconds, Usage) readings, at each interval's end
    (1.0 = one whole CPU): the growth of the group's CPU time over the time between them."""
    times, rates = [], []
    for (t0, u0), (t1, u1) in zip(samples, samples[1:], strict=False):
        if t1 > t0:
            times.append(t1)
            rates.append((u1.cpu_seconds - u0.cpu_seconds) / (t1 - t0))
    return times, rates


# --- parsing limits, as `contained run --memory 32M --cpus 0.5 --pids-limit 64` does ---------


def parse_memory(text: str) -> int:
    """Bytes for Docker's memory syntax: "16m", "32M", "1g", "512k", "1048576", "1.5g"."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise BadLimit(
            f"invalid memory limit {text!r}: use a number with an optional unit b, k, m or g, "
            "e.g. 32M"
        )
    number, unit, _ = match.groups()
    value = int(float(number) * _UNITS[unit.lower()])
    if value < MIN_MEMORY:
        raise BadLimit(f"memory limit {text!r} is too small: the minimum is 6M, e.g. use 32M")
    most = _machine_memory() * MAX_MEMORY_FACTOR
    if value > most:
        raise BadLimit(
            f"memory limit {text!r} is more than {MAX_MEMORY_FACTOR} times what this machine "
            f"has ({_machine_memory() >> 20}M): check the number, e.g. use 512M"
        )
    return value


def _machine_memory() -> int:
    """Bytes of RAM (MemTotal); the limit check falls back to the kernel's largest value."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return (1 << 63) // MAX_MEMORY_FACTOR


def parse_cpus(text: str) -> float:
    """CPUs' worth of time for Docker's --cpus syntax: "0.5", "2"."""
    available = os.cpu_count() or 1
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (MIN_CPUS <= value <= available):
        raise BadLimit(f"invalid cpus {text!r}: {_cpus_range(available)}; e.g. use 0.5")
    return value


def _cpus_range(available: int) -> str:
    # Docker's words ("Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available")
    return (f"the range of CPUs is from {MIN_CPUS} to {available:.2f}, as there are only "
            f"{available} CPUs available")


def parse_pids(text: str) -> int:
    """A process count for --pids-limit: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise BadLimit(f"invalid pids limit {text!r}: use a whole number of at least 1, e.g. 64")
    return int(text)


def check_limits(limits: Limits, host) -> None:
    """Refuse limits out of range, or for a controller the `CgroupHost` does not have."""
    if limits.memory is not None and limits.memory < MIN_MEMORY:
        raise BadLimit(f"memory limit {limits.memory} bytes is too small: the minimum is 6M")
    if limits.cpus is not None and not (MIN_CPUS <= limits.cpus <= (os.cpu_count() or 1)):
        raise BadLimit(f"invalid cpus {limits.cpus}: {_cpus_range(os.cpu_count() or 1)}")
    if limits.pids is not None and limits.pids < 1:
        raise BadLimit(f"invalid pids limit {limits.pids}: use a whole number of at least 1")
    for controller, value in (
        ("memory", limits.memory),
        ("cpu", limits.cpus),
        ("pids", limits.pids),
    ):
        if value is not None and host.where(controller) is None:
            raise ControllerMissing(
                f"cannot limit {controller}: this host has no {controller} controller; "
                "run `contained doctor` or drop the limit"
            )


def limit_value(text: str | None) -> int | None:
    """A limit file's number; None for "max" (v2) or v1's huge "unlimited"."""
    if text is None or text.strip() == "max":
        return None
    value = int(text)
    return None if value >= V1_UNLIMITED else value
