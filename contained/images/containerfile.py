"""Reading a Containerfile (Dockerfile): instructions, line numbers, variables, ignore files.

Taught in notebook 09 ("Build an image"). A Containerfile is a list of instructions, one per
line (a trailing backslash continues it), each either changing the config (ENV, WORKDIR, CMD,
...) or making a layer (RUN, COPY, ADD); `contained.build.builder` runs them. This module
only reads: every problem is one line naming the file and line, e.g.
``Containerfile:7: unknown instruction 'RUNN'``.

Variables (``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``${NAME:+alt}``) are replaced in every
instruction but RUN, CMD and ENTRYPOINT, whose shell expands them at run time, as Docker does.
"""

import fnmatch
import json
import re
import shlex
from pathlib import Path

from contained.errors import ContainedError
from contained.records import field, record

INSTRUCTIONS = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "CMD",
                "ENTRYPOINT", "LABEL", "EXPOSE")
#: the flags each instruction accepts (others are refused with their line number)
FLAGS = {"COPY": ("chown",), "ADD": ("chown",)}
EXEC_FORM = ("RUN", "CMD", "ENTRYPOINT", "COPY", "ADD")
NOT_SUBSTITUTED = ("RUN", "CMD", "ENTRYPOINT")
IGNORE_FILES = (".containerignore", ".dockerignore")
DEFAULT_NAMES = ("Containerfile", "Dockerfile")
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
                      r"(?::(?P<op>[-+])(?P<word>[^}]*))?\}"
                      r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class ContainerfileError(ContainedError):
    """A Containerfile cannot be read: a syntax error or an unknown instruction, with its line."""


@record
class Instruction:
    """One instruction as written: its keyword, flags and arguments, and where it was."""

    keyword: str
    arguments: str              # the text after the keyword and flags, continuations joined
    line: int                   # where it starts (1-based)
    source: str = "Containerfile"
    flags: dict = field(default_factory=dict)
    exec_form: list[str] | None = None   # ["sh", "-c", "..."] written as JSON

    def error(self, message: str) -> ContainerfileError:
        return ContainerfileError(f"{self.source}:{self.line}: {message}")

    @property
    def text(self) -> str:
        """The instruction as one line (for history and the cache key)."""
        flags = "".join(f"--{key}={value} " for key, value in sorted(self.flags.items()))
        return f"{self.keyword} {flags}{self.arguments}".strip()


def find(context: Path, name: str | None) -> Path:
    """The -f file, or Containerfile/Dockerfile in the context."""
    if name:
        path = Path(name)
        if not path.is_file():
            raise ContainerfileError(f"no file {name}: give -f an existing Containerfile")
        return path
    for default in DEFAULT_NAMES:
        if (Path(context) / default).is_file():
            return Path(context) / default
    raise ContainerfileError(f"no Containerfile or Dockerfile in {context}: write one, or pass -f")


def parse(text: str, source: str = "Containerfile") -> list[Instruction]:
    """Instructions with their line numbers; comments and blank lines dropped."""
    instructions = []
    for line, logical in _logical_lines(text, source):
        keyword, _, rest = logical.strip().partition(" ")
        upper = keyword.upper()
        if upper not in INSTRUCTIONS:
            raise ContainerfileError(f"{source}:{line}: unknown instruction {keyword!r} (known: "
                                     f"{', '.join(INSTRUCTIONS)})")
        instruction = Instruction(upper, rest.strip(), line, source)
        _take_flags(instruction)
        if not instruction.arguments and upper not in ("CMD", "ENTRYPOINT"):
            raise instruction.error(f"{upper} needs arguments")
        if upper in EXEC_FORM and instruction.arguments.startswith("["):
            instruction.exec_form = _json_list(instruction)
        instructions.append(instruction)
    if not instructions or instructions[0].keyword not in ("FROM", "ARG") \
            or not any(i.keyword == "FROM" for i in instructions):
        raise ContainerfileError(f"{source}:{instructions[0].line if instructions else 1}: "
                                 "the first instruction must be FROM (ARG may precede it)")
    froms = [i for i in instructions if i.keyword == "FROM"]
    if len(froms) > 1:
        raise froms[1].error("multi-stage builds (a second FROM) are not supported: split "
                             "them into two builds")
    return instructions


def _logical_lines(text: str, source: str):
    """(first line number, text) with backslash continuations joined and comments skipped.
    Comment lines inside a continuation are dropped, as Docker does."""
    pending, start = [], 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        yield start, " ".join(part.strip() for part in pending if part.strip())
        pending = []
    if pending:
        raise ContainerfileError(f"{source}:{start}: the file ends inside a line continuation "
                                 "(a trailing backslash)")


def _take_flags(instruction: Instruction) -> None:
    allowed = FLAGS.get(instruction.keyword, ())
    while instruction.arguments.startswith("--"):
        flag, _, rest = instruction.arguments.partition(" ")
        key, equals, value = flag[2:].partition("=")
        if key not in allowed or not equals:
            raise instruction.error(f"{instruction.keyword} does not support the flag {flag!r}"
                                    + (f" (supported: --{', --'.join(allowed)}=…)" if allowed
                                       else ""))
        instruction.flags[key] = value
        instruction.arguments = rest.strip()


def _json_list(instruction: Instruction) -> list[str]:
    try:
        value = json.loads(instruction.arguments)
    except json.JSONDecodeError as error:
        raise instruction.error(f"invalid JSON in the exec form: {error.msg} at column "
                                f"{error.colno}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise instruction.error("the exec form must be a JSON list of strings, e.g. "
                                '["sh", "-c", "echo hi"]')
    return value


# ---------------------------------------------------------------------------------------------
# Variables and arguments

def substitute(instruction: Instruction, text: str, variables: dict[str, str]) -> str:
    """Replace $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alt}; unknown names become ''."""
    def replace(match):
        name = match.group("braced") or match.group("plain")
        value = variables.get(name, "")
        op = match.group("op")
        if op == "-":
            return value or match.group("word")
        if op == "+":
            return match.group("word") if value else ""
        return value

    if "${" in text and text.count("${") != text.count("}"):
        raise instruction.error("unbalanced ${...} in a variable reference")
    return VARIABLE.sub(replace, text)


def key_values(instruction: Instruction, text: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: ``K=V K2="v 2"``, or the legacy ``K V`` form for a single pair."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise instruction.error(f"{instruction.keyword}: {error}") from None
    if words and "=" not in words[0]:
        name, _, value = text.partition(" ")
        if not value.strip():
            raise instruction.error(f"{instruction.keyword} {name} needs a value: "
                                    f"{instruction.keyword} {name}=VALUE")
        return [(name, value.strip())]
    pairs = []
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or not name:
            raise instruction.error(f"{instruction.keyword}: expected NAME=VALUE, got {word!r}")
        pairs.append((name, value))
    return pairs


def words(instruction: Instruction, text: str) -> list[str]:
    """COPY/ADD sources and destination, EXPOSE ports: the exec form or whitespace-split."""
    if instruction.exec_form is not None:
        return list(instruction.exec_form)
    try:
        return shlex.split(text)
    except ValueError as error:
        raise instruction.error(str(error)) from None


# ---------------------------------------------------------------------------------------------
# .containerignore / .dockerignore

def ignore_patterns(context: Path) -> list[tuple[bool, str]]:
    """(exclude?, pattern) pairs from the context's ignore file; ``!pattern`` re-includes."""
    for name in IGNORE_FILES:
        path = Path(context) / name
        if path.is_file() and not path.is_symlink():
            patterns = []
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                include = line.startswith("!")
                pattern = line[1:] if include else line
                pattern = pattern.strip().strip("/")
                if pattern.startswith("./"):
                    pattern = pattern[2:]
                patterns.append((not include, pattern))
            return patterns
    return []


def ignored(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    """Whether a context path (``dir/file``) is excluded: the last matching pattern wins, and a
    pattern matching a parent directory matches everything below it."""
    result = False
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for exclude, pattern in patterns:
        if any(_matches(prefix, pattern) for prefix in prefixes):
            result = exclude
    return result


def _matches(path: str, pattern: str) -> bool:
    if "**" in pattern:
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.fullmatch(regex, path) is not None
    return len(path.split("/")) == len(pattern.split("/")) and fnmatch.fnmatchcase(path, pattern)
