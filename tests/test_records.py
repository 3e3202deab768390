"""contained.records: the value classes behave as the dataclasses they replace, and the way to
`contained run` (the CLI and its worker) imports neither `dataclasses` nor the other modules
it only needs off that way."""

import pickle
import subprocess
import sys

import pytest

from contained.records import FrozenInstanceError, asdict, field, fields, record, replace


@record(frozen=True)
class Point:
    """A frozen record with a default."""

    x: int
    y: int = 0


@record(frozen=True)
class Labelled:
    """Defaults by factory, a field left out of ==, hash and repr, records inside."""

    point: Point
    tags: list = field(default_factory=list)
    note: str | None = field(default=None, compare=False, hash=False, repr=False)


@record
class Counter:
    """A mutable record whose __post_init__ fills a blank."""

    name: str
    count: int = 0
    seen: dict = field(default_factory=dict)

    def __post_init__(self):
        self.seen.setdefault(self.name, self.count)


@record(frozen=True)
class Point3(Point):
    """A record that extends another: the base's fields come first."""

    z: int = 0


def test_arguments_by_position_by_name_and_by_default():
    assert (Point(1, 2).x, Point(1, 2).y) == (1, 2)
    assert Point(y=5, x=4) == Point(4, 5)
    assert Point(3).y == 0
    assert Point3(1, 2, 3).z == 3 and [f.name for f in fields(Point3)] == ["x", "y", "z"]


@pytest.mark.parametrize("call, words", [
    (lambda: Point(), "missing required argument: 'x'"),
    (lambda: Point(1, 2, 3), "takes 2 arguments, 3 given"),
    (lambda: Point(1, x=2), "got 'x' twice"),
    (lambda: Point(1, z=2), "unexpected arguments: z"),
])
def test_wrong_arguments_are_type_errors_that_name_the_field(call, words):
    with pytest.raises(TypeError, match=words):
        call()


def test_a_field_without_a_default_after_one_with_a_default_is_refused():
    with pytest.raises(TypeError, match="'z' has no default but follows 'y'"):
        @record
        class Broken(Point):
            """y has a default (in Point), z has none."""

            z: int


def test_a_frozen_record_refuses_changes_and_hashes_by_value():
    point = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        point.x = 3
    with pytest.raises(AttributeError):
        del point.y
    assert hash(point) == hash(Point(1, 2)) and {point, Point(1, 2)} == {point}
    assert Point(1, 2) != Point(2, 1) and Point(1, 2) != (1, 2)
    assert Point3(1, 2, 0) != Point(1, 2)  # another class is never equal, as in dataclasses


def test_compare_false_fields_count_in_neither_equality_nor_hash_nor_repr():
    one, other = Labelled(Point(1), (), note="a"), Labelled(Point(1), (), note="b")
    assert one == other and hash(one) == hash(other)
    assert repr(one) == "Labelled(point=Point(x=1, y=0), tags=())"


def test_a_default_factory_gives_each_instance_its_own_value():
    one, other = Labelled(Point(1)), Labelled(Point(1))
    one.tags.append("x")
    assert other.tags == [] and "tags" not in vars(Labelled)


def test_a_mutable_record_is_unhashable_and_runs_post_init():
    counter = Counter("a", 2)
    counter.count = 3
    assert counter.seen == {"a": 2}
    with pytest.raises(TypeError):
        hash(counter)


def test_asdict_replace_match_and_pickle():
    value = Labelled(Point(1, 2), [Point(3)], note="kept")
    assert asdict(value) == {"point": {"x": 1, "y": 2}, "tags": [{"x": 3, "y": 0}],
                             "note": "kept"}
    changed = replace(value, point=Point(9))
    assert changed.point == Point(9) and changed.note == "kept" and value.point == Point(1, 2)
    match Point(1, 2):
        case Point(a, b):
            assert (a, b) == (1, 2)
    assert pickle.loads(pickle.dumps(value)) == value


def test_the_way_to_contained_run_imports_neither_dataclasses_nor_inspect():
    # What the CLI process imports for `run`, and what its worker imports to run the container:
    # dataclasses (and the inspect it imports) cost ~10 ms there, before any class is made;
    # traceback (an internal error) and tempfile (compiling a seccomp filter) ~5 ms more.
    probe = ("import sys; from contained import cli, options; "
             "from contained.runtime import ahead, container, relay, runner; "
             "from contained.images import store; print(sorted(m for m in ('dataclasses',"
             " 'inspect', 'traceback', 'tempfile') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
