"""state: a container's record, written in turns and read whole (no root needed)."""

import json

from contained.runtime import state
from contained.runtime.spec import ContainerSpec


def spec_in(home) -> ContainerSpec:
    directory = home / "containers" / ("c" * 64)
    return ContainerSpec(id="c" * 64, name="rec", image="busybox", directory=str(directory),
                         lowers=[], args=["true"], env=[])


def test_nothing_recorded_reads_as_none(home):
    assert state.read("c" * 64) is None


def test_later_writes_add_to_what_was_recorded(home):
    spec = spec_in(home)
    state.write_state(spec, **state.owner())
    state.write_state(spec, runner_pid=42, cgroup="spare-1-2")
    record = state.read(spec.id)
    assert record["owner_pid"] > 0 and record["owner_start_time"] > 0
    assert (record["runner_pid"], record["cgroup"]) == (42, "spare-1-2")
    assert ContainerSpec.from_dict(record["spec"]) == spec


def test_a_write_leaves_one_whole_file(home):
    spec = spec_in(home)
    state.write_state(spec, runner_pid=1)
    state.write_state(spec, runner_pid=2)
    directory = state.state_path(spec.id).parent
    assert [p.name for p in directory.iterdir()] == ["state.json"]  # no temporary left
    assert json.loads(state.state_path(spec.id).read_text())["runner_pid"] == 2


def test_a_torn_record_reads_as_none(home):
    spec = spec_in(home)
    state.write_state(spec)
    state.state_path(spec.id).write_text('{"spec": ')
    assert state.read(spec.id) is None
