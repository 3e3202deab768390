"""Value classes declared by their fields: what `dataclasses` gives, at a fraction of its start-up.

Not taught by a notebook; every module that holds a plain record (a spec, a wire event, a mount
line) uses it. ``@record(frozen=True)`` over a class of annotated fields gives what
``@dataclass(frozen=True)`` gives and the project uses: ``__init__`` (positional or by name,
defaults, ``field(default_factory=...)``, ``__post_init__``), ``__repr__``, ``__eq__``, a
``__hash__`` when frozen, ``__match_args__``, and `fields`, `asdict` and `replace`.

Why not `dataclasses`: the CLI is mostly imports (`contained.runtime.ahead`), and on the
Python 3.11 these machines run, ``import dataclasses`` pulls in `inspect` (and with it `ast`,
`dis` and `tokenize`), and every class it makes compiles five or six methods with ``exec``:
about 0.6 ms a frozen class, ~30 of them on the way to ``contained run``. Here a class gets
the same few shared methods, which read its field table; nothing is compiled. An instance
costs a few microseconds more to make, and no record is made in a hot loop.
"""

__all__ = ["FrozenInstanceError", "asdict", "field", "fields", "record", "replace"]

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a frozen record (as `dataclasses.FrozenInstanceError`)."""


class Field:
    """One field: its name, default (or factory), and whether it counts in ==, hash and repr."""

    __slots__ = ("name", "default", "default_factory", "compare", "hash", "repr")

    def __init__(self, default=_MISSING, default_factory=_MISSING, compare=True, hash=None,
                 repr=True):
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.hash = compare if hash is None else hash
        self.repr = repr

    def value(self, owner: str):
        """The value an instance gets when the caller gave none."""
        if self.default is not _MISSING:
            return self.default
        if self.default_factory is not _MISSING:
            return self.default_factory()
        raise TypeError(f"{owner}() missing required argument: {self.name!r}")


def field(*, default=_MISSING, default_factory=_MISSING, compare=True, hash=None,
          repr=True) -> Field:
    """A field with options, as `dataclasses.field`: ``tags: list = field(default_factory=list)``"""
    return Field(default, default_factory, compare, hash, repr)


def record(cls=None, /, *, frozen: bool = False):
    """Make `cls` a record of its annotated fields (bases' fields first); see the module."""
    def make(cls):
        table = dict(getattr(cls, "__record_fields__", {}))
        for name in cls.__dict__.get("__annotations__", {}):
            declared = cls.__dict__.get(name, _MISSING)
            one = declared if isinstance(declared, Field) else Field(declared)
            one.name = name
            if one.default is _MISSING and name in cls.__dict__:
                delattr(cls, name)  # a factory's Field is no class attribute
            elif one.default is not _MISSING:
                setattr(cls, name, one.default)
            table[name] = one
        _check_order(cls.__name__, table.values())
        cls.__record_fields__ = table
        cls.__record_all__ = tuple(table.values())
        cls.__record_compared__ = tuple(f.name for f in table.values() if f.compare)
        cls.__record_hashed__ = tuple(f.name for f in table.values() if f.hash)
        cls.__match_args__ = tuple(table)
        for name, method in _METHODS.items():
            if name not in cls.__dict__:
                setattr(cls, name, method)
        if frozen:
            cls.__setattr__ = _frozen_setattr
            cls.__delattr__ = _frozen_delattr
        # A class body with __eq__ but no __hash__ holds __hash__ = None: that is no choice.
        own_hash = cls.__dict__.get("__hash__", _MISSING)
        if own_hash is _MISSING or (own_hash is None and "__eq__" in cls.__dict__):
            cls.__hash__ = _hash if frozen else None  # mutable and compared by value: unhashable
        return cls

    return make if cls is None else make(cls)


def _check_order(owner: str, table) -> None:
    """As dataclasses do: a field with no default cannot follow one with a default, since
    arguments by position would then fill the wrong fields."""
    optional = None
    for one in table:
        if one.default is not _MISSING or one.default_factory is not _MISSING:
            optional = one.name
        elif optional is not None:
            raise TypeError(f"{owner}: field {one.name!r} has no default but follows"
                            f" {optional!r}, which has one")


def _init(self, *args, **kwargs):
    owner = type(self)
    table = owner.__record_all__
    if len(args) > len(table):
        raise TypeError(f"{owner.__name__}() takes {len(table)} arguments, {len(args)} given")
    put = object.__setattr__  # frozen records refuse the usual one
    for one, value in zip(table, args, strict=False):  # the rest come by name
        if one.name in kwargs:
            raise TypeError(f"{owner.__name__}() got {one.name!r} twice")
        put(self, one.name, value)
    for one in table[len(args):]:
        put(self, one.name, kwargs.pop(one.name) if one.name in kwargs
            else one.value(owner.__name__))
    if kwargs:
        raise TypeError(f"{owner.__name__}() got unexpected arguments: {', '.join(kwargs)}")
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _repr(self) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.__record_all__ if f.repr)
    return f"{type(self).__qualname__}({shown})"


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return all(getattr(self, name) == getattr(other, name) for name in self.__record_compared__)


def _hash(self) -> int:
    return hash(tuple(getattr(self, name) for name in self.__record_hashed__))


def _frozen_setattr(self, name, value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self, name):
    raise FrozenInstanceError(f"cannot delete field {name!r}")


_METHODS = {"__init__": _init, "__repr__": _repr, "__eq__": _eq}


def fields(record_or_class) -> tuple[Field, ...]:
    """Its fields, in order, as `dataclasses.fields`."""
    return record_or_class.__record_all__


def asdict(value) -> dict:
    """A record as a dict, records within it too (in lists, tuples and dicts), as
    `dataclasses.asdict`; what JSON gets."""
    return {f.name: _plain(getattr(value, f.name)) for f in value.__record_all__}


def _plain(value):
    if hasattr(type(value), "__record_all__"):
        return asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def replace(value, /, **changes):
    """A copy of a record with some fields changed, as `dataclasses.replace`."""
    current = {f.name: getattr(value, f.name) for f in value.__record_all__}
    return type(value)(**(current | changes))
