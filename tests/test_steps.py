"""The one step plan: its phases, their order, and what --dry-run shows of them (nothing runs)."""

from pathlib import Path

from contained.runtime import container, steps
from contained.runtime.spec import ContainerSpec


def a_spec(tmp_path: Path, **options) -> ContainerSpec:
    return ContainerSpec(id="a" * 64, name="planned", image="busybox:latest",
                         directory=str(tmp_path / "c"), lowers=[str(tmp_path / "lower")],
                         args=["sh", "-c", "true"], env=["PATH=/bin"], hostname="planned",
                         **options)


def test_the_plan_has_its_phases_in_the_documented_order(tmp_path):
    plan = steps.build(a_spec(tmp_path))
    assert [phase.name for phase in plan.phases()] == [
        "host", "user", "pid-fork", "namespaces", "outside", "inside", "command"]
    assert [phase.who for phase in plan.phases()] == [
        steps.RUNNER, steps.RUNNER, steps.RUNNER, steps.PID_ONE, steps.RUNNER, steps.PID_ONE,
        steps.PID_ONE]


def test_a_dry_run_is_every_phase_in_order_and_runs_nothing(tmp_path):
    spec = a_spec(tmp_path)
    shown = container.dry_run(spec)
    assert shown == [step.explain() for phase in steps.build(spec).phases()
                     for step in phase.steps]
    assert shown[0].startswith(f"mkdir -p {spec.directory}/upper")
    assert shown[-1].startswith("exec env -i PATH=/bin sh -c true")
    order = [next(i for i, line in enumerate(shown) if line.startswith(prefix))
             for prefix in ("mkdir -p", "unshare --pid --fork", "hostname planned",
                            "unshare --cgroup", "keyctl session", "setpriv", "# seccomp",
                            "exec env")]
    assert order == sorted(order)
    assert not Path(spec.directory).exists()


def test_a_bridged_plan_shows_the_outside_phase_right_after_pid_one_announces_its_netns(
        tmp_path, home):
    shown = container.dry_run(a_spec(tmp_path, net="bridge"))
    announce = next(i for i, line in enumerate(shown) if line.startswith("# (outside)"))
    assert shown[announce - 1].startswith("unshare --pid --fork")
    hostname = next(i for i, line in enumerate(shown) if line.startswith("hostname "))
    outside = shown[announce + 1:hostname]
    assert any("type veth peer name eth0" in line and "netns PID " in line for line in outside)


def test_a_rootless_plan_enters_its_user_namespace_before_pid_one_and_needs_no_cgroup(tmp_path):
    plan = steps.build(a_spec(tmp_path, rootless=True, pids_limit=None))
    assert [s.shell for s in plan.user.steps] == ["unshare --user --map-root-user"]
    assert isinstance(plan.group, steps.NoCgroup) and len(plan.host.steps) == 1


def test_a_spares_plan_leaves_out_what_the_spare_staged(tmp_path):
    plan = steps.build(a_spec(tmp_path), with_cgroup=False, staged=tmp_path / "staging")
    assert plan.namespaces.steps == []
    assert not any(s.shell == "ip link set lo up" for s in plan.inside.steps)
    assert isinstance(plan.group, steps.NoCgroup)


def test_pid_one_announces_its_network_through_the_hook_the_real_run_sets(tmp_path):
    plan = steps.build(a_spec(tmp_path, net="bridge"))
    announce = plan.namespaces.steps[-1]
    announce.run()  # unset: only shown, nothing happens
    called = []
    plan.hooks.announce_netns = lambda: called.append("netns")
    announce.run()
    assert called == ["netns"]
