"""The machine check says what works, and what to do where something does not."""

from contained import doctor


def test_every_check_is_one_line_with_a_fix_when_failing():
    for check in doctor.checks():
        line = check.line()
        assert "\n" not in line
        if not check.ok and check.required:
            assert check.fix, check


def test_root_check_matches_the_process():
    import os

    root = next(c for c in doctor.checks() if c.name == "root")
    assert root.ok == (os.geteuid() == 0)
