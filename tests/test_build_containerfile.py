"""Reading Containerfiles (contained.images.containerfile): instructions, errors, ignore files.

No root needed: nothing here runs a container.
"""

import pytest

from contained.images import containerfile
from contained.images.containerfile import ContainerfileError


def test_instructions_keep_their_line_numbers_across_comments_and_continuations():
    text = ("# syntax comment\n"
            "FROM busybox\n"
            "\n"
            "RUN echo one \\\n"
            "    # a comment inside the continuation\n"
            "    && echo two\n"
            'CMD ["sh", "-c", "echo hi"]\n')
    parsed = containerfile.parse(text)
    assert [(i.keyword, i.line) for i in parsed] == [("FROM", 2), ("RUN", 4), ("CMD", 7)]
    assert parsed[1].arguments == "echo one && echo two"
    assert parsed[2].exec_form == ["sh", "-c", "echo hi"]


@pytest.mark.parametrize("text, message", [
    ("FROM busybox\nRUNN echo\n", "Containerfile:2: unknown instruction 'RUNN'"),
    ("FROM busybox\n\nCOPY --from=x a b\n", "Containerfile:3: COPY does not support the flag"),
    ("FROM busybox\nRUN echo \\\n", "Containerfile:2: the file ends inside"),
    ('FROM busybox\nCMD ["sh", 1]\n', "Containerfile:2: the exec form must be a JSON list"),
    ("RUN true\n", "Containerfile:1: the first instruction must be FROM"),
    ("FROM busybox\nFROM busybox\n", "Containerfile:2: multi-stage builds"),
    ("FROM busybox\nWORKDIR\n", "Containerfile:2: WORKDIR needs arguments"),
])
def test_a_syntax_error_is_one_line_with_its_line_number(text, message):
    with pytest.raises(ContainerfileError) as raised:
        containerfile.parse(text)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_broken_json_exec_form_says_where():
    with pytest.raises(ContainerfileError, match=r"^Containerfile:2: invalid JSON"):
        containerfile.parse('FROM busybox\nRUN ["sh", "-c" "x"]\n')


def test_variables_are_substituted_with_defaults_and_alternatives():
    instruction = containerfile.parse("FROM busybox\nENV A=1\n")[1]
    values = {"NAME": "web", "EMPTY": ""}
    text = "$NAME ${NAME} ${EMPTY:-fallback} ${NAME:+set} ${MISSING}."
    assert containerfile.substitute(instruction, text, values) == "web web fallback set ."


def test_env_takes_pairs_with_quotes_and_the_legacy_form():
    instruction = containerfile.parse("FROM busybox\nENV A=1\n")[1]
    assert containerfile.key_values(instruction, 'A=1 B="two words"') == [
        ("A", "1"), ("B", "two words")]
    assert containerfile.key_values(instruction, "LEGACY some value") == [
        ("LEGACY", "some value")]


def test_the_ignore_file_excludes_patterns_and_re_includes_exceptions(tmp_path):
    (tmp_path / ".dockerignore").write_text("# comment\n*.log\n!keep.log\nbuild/\n**/*.tmp\n")
    patterns = containerfile.ignore_patterns(tmp_path)
    assert containerfile.ignored("debug.log", patterns)
    assert not containerfile.ignored("keep.log", patterns)
    assert containerfile.ignored("build/out/x", patterns)
    assert containerfile.ignored("a/b/c.tmp", patterns)
    assert not containerfile.ignored("src/main.py", patterns)


def test_containerignore_wins_over_dockerignore(tmp_path):
    (tmp_path / ".containerignore").write_text("a\n")
    (tmp_path / ".dockerignore").write_text("b\n")
    patterns = containerfile.ignore_patterns(tmp_path)
    assert containerfile.ignored("a", patterns) and not containerfile.ignored("b", patterns)


def test_a_missing_containerfile_says_what_to_write(tmp_path):
    with pytest.raises(ContainerfileError, match="no Containerfile or Dockerfile"):
        containerfile.find(tmp_path, None)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    assert containerfile.find(tmp_path, None).name == "Dockerfile"
