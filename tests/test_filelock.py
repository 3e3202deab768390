"""contained.filelock: one flock helper, exclusive or shared, released on close."""

import fcntl
import os

import pytest

from contained import filelock


def _try(path, operation) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_an_exclusive_lock_keeps_everyone_else_out_until_the_block_ends(tmp_path):
    path = tmp_path / "x.lock"
    with filelock.locked(path):
        assert not _try(path, fcntl.LOCK_SH)
    assert _try(path, fcntl.LOCK_EX)


def test_shared_holders_let_readers_in_but_not_a_writer(tmp_path):
    path = tmp_path / "x.lock"
    with filelock.locked(path, shared=True):
        assert _try(path, fcntl.LOCK_SH)
        assert not _try(path, fcntl.LOCK_EX)


def test_a_shared_holder_can_upgrade_and_go_back(tmp_path):
    path = tmp_path / "x.lock"
    with filelock.locked(path, shared=True) as fd:
        filelock.relock(fd)
        assert not _try(path, fcntl.LOCK_SH)
        filelock.relock(fd, shared=True)
        assert _try(path, fcntl.LOCK_SH)


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    path = tmp_path / "x.lock"
    with pytest.raises(RuntimeError), filelock.locked(path):
        raise RuntimeError
    assert _try(path, fcntl.LOCK_EX)


def test_a_missing_lock_file_is_made_with_the_mode_given(tmp_path):
    path = tmp_path / "x.lock"
    with filelock.locked(path, mode=0o640):
        pass
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
