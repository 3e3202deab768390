"""Capabilities decoded: what the hexadecimal masks in /proc/PID/status mean, bit by bit.

Taught in notebook 00 (root or not?). Root's powers are split into ~40 capabilities, one bit
each; /proc/self/status shows the sets as hexadecimal masks. The shell equivalents::

    grep -E '^Cap(Eff|Bnd)' /proc/self/status
    capsh --decode=000001fffeffffff          # (libcap2-bin) the names behind a mask
    cat /proc/sys/kernel/cap_last_cap        # the highest capability this kernel knows

"All capabilities" is not a fixed number: it is every bit up to ``cap_last_cap``, which grows
with the kernel (CAP_PERFMON and CAP_BPF came in 5.8, CAP_CHECKPOINT_RESTORE in 5.9). A bit below
it that is missing was taken away by whatever started this session.
"""

from pathlib import Path

from contained.runtime.process import CAPABILITY_NUMBERS

CAPABILITY_NAMES = {number: name for name, number in CAPABILITY_NUMBERS.items()}
#: the kernel each of the newer capabilities first appeared in
ADDED_IN = {"CAP_AUDIT_READ": "3.16", "CAP_PERFMON": "5.8", "CAP_BPF": "5.8",
            "CAP_CHECKPOINT_RESTORE": "5.9"}
SETS = {"CapInh": "inheritable", "CapPrm": "permitted", "CapEff": "effective",
        "CapBnd": "bounding", "CapAmb": "ambient"}


def masks(status: str | None = None) -> dict[str, int]:
    """The capability masks of /proc/self/status (or of `status`, its text), by field name."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    found = {}
    for line in text.splitlines():
        field, _, value = line.partition(":")
        if field in SETS:
            found[field] = int(value.strip(), 16)
    return found


def last_cap(path: Path = Path("/proc/sys/kernel/cap_last_cap")) -> int:
    """The highest capability number this kernel knows."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return max(CAPABILITY_NAMES)


def name(number: int) -> str:
    return CAPABILITY_NAMES.get(number, f"capability {number} (newer than this workbook)")


def decode(mask: int, highest: int) -> list[str]:
    """The names of the capabilities set in `mask`, among 0..`highest`."""
    return [name(bit) for bit in range(highest + 1) if mask >> bit & 1]


def explain(field: str, mask: int, highest: int, bounding: int | None = None) -> list[str]:
    """Lines that say what `mask` (the set `field`, e.g. CapEff) holds and what it lacks."""
    everything = (1 << (highest + 1)) - 1
    held = decode(mask, highest)
    lines = [f"{field} {mask:016x} ({SETS[field]}): {len(held)} of the {highest + 1} "
             f"capabilities this kernel knows (0..{highest}; all of them would be "
             f"{everything:016x})"]
    missing = [bit for bit in range(highest + 1) if not mask >> bit & 1]
    if not held:
        lines.append("  none: an ordinary user's process has no capabilities (a setuid-root "
                     "program, or root of a user namespace, gets some)")
        missing = []
    elif len(missing) > 8:
        lines.append(f"  held: {', '.join(held)}")
        missing = []
    for bit in missing:
        if field != "CapBnd" and bounding is not None and not bounding >> bit & 1:
            why = "not in the bounding set either, so nothing in this session can regain it"
        elif field == "CapBnd":
            why = ("dropped from the bounding set by whatever started this session (a "
                   "container runtime, systemd's CapabilityBoundingSet=, a sandbox): no process "
                   "started from here can ever get it back")
        else:
            why = "allowed by the bounding set, but not in effect for this process"
        lines.append(f"  missing: {name(bit)} (bit {bit}): {why}")
    newer = [cap for cap, number in CAPABILITY_NUMBERS.items() if number > highest]
    if newer:
        lines.append("  this kernel predates " + ", ".join(
            f"{cap} (Linux {ADDED_IN.get(cap, '?')})" for cap in newer)
            + ": a newer kernel's 'all' has more bits")
    if mask >> (highest + 1):
        lines.append(f"  bits above {highest} are set: a value from another kernel?")
    return lines


def report(status: str | None = None, highest: int | None = None) -> str:
    """CapEff and CapBnd of this process, decoded capability by capability."""
    found = masks(status)
    highest = last_cap() if highest is None else highest
    bounding = found.get("CapBnd")
    lines = []
    for field in ("CapEff", "CapBnd"):
        if field in found:
            lines += explain(field, found[field], highest, bounding)
    return "\n".join(lines)


def table(status: str | None = None, highest: int | None = None):
    """Every capability with a yes/no for the effective and bounding sets."""
    from contained.workbook.tables import Table

    found = masks(status)
    highest = last_cap() if highest is None else highest
    rows = [[str(bit), name(bit), "yes" if found.get("CapEff", 0) >> bit & 1 else "-",
             "yes" if found.get("CapBnd", 0) >> bit & 1 else "-"]
            for bit in range(highest + 1)]
    return Table(["bit", "capability", "CapEff", "CapBnd"], rows)
