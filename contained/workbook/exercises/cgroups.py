"""Notebook 02's exercises (cgroups): memory.max as the kernel reads it, cpu.max, CPU weights,
and what a soft memory limit does.

02.1 `check_memory_max` judges a value as memparse would (`kernel_memory_bytes`); 02.2
`check_cpu_max` within the kernel's bounds for a period and quota; 02.3 `check_cpu_share` a
share of one CPU under cpu.weight; 02.4 is a predict-then-run question. The files they are
about::

    echo 32M > /sys/fs/cgroup/G/memory.max           # or 33554432; "32MB" is "Invalid argument"
    echo "50000 100000" > /sys/fs/cgroup/G/cpu.max   # half a CPU
    echo 300 > /sys/fs/cgroup/B/cpu.weight           # v1: cpu.shares
"""

import re

from contained.runtime import cgroups
from contained.workbook.exercises.hints import (
    Feedback,
    exercise,
    prediction,
    right,
    unanswered,
    wrong,
)

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
        return unanswered(f"set answer to what you would write into memory.max for {limit}")
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
        return unanswered(f'set answer to the cpu.max line for {cpus} CPUs: "QUOTA PERIOD"')
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
        return unanswered("set answer to B's fraction of the CPU, e.g. 0.5")
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
