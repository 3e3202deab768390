"""Notebook 02's experiments beyond a hard limit (contained/workbook/cgroup_labs.py), on real
cgroups under the test session's own parent."""

from conftest import needs_root

from contained.workbook import cgroup_labs


@needs_root
def test_cpu_weights_share_one_cpu_in_proportion(capsys):
    result = cgroup_labs.contention((100, 300), seconds=1.5)
    share = cgroup_labs.share_of_b(result)
    assert 0.6 < share < 0.9, share
    shown = capsys.readouterr().out
    assert "cpu.weight" in shown or "cpu.shares" in shown


@needs_root
def test_a_soft_memory_limit_does_not_kill(capsys):
    soft = cgroup_labs.soft_memory_limit("16M", allocate_mb=32, timeout=8)
    assert soft["oom_kills"] == 0
    assert soft["file"] in ("memory.high", "memory.soft_limit_in_bytes")
    assert "got 32 MB" in soft["output"] or "throttled" in soft["output"]
