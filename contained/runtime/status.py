"""How a container's command ended, as a shell says it: exit statuses, the errors carrying them.

Taught in notebook 06 (``echo $?`` after ``%%container``) and 02 (an OOM kill is status 137).
A shell reports a command killed by signal N as 128 + N, so SIGKILL is 137; Docker adds 125
("the container could not be set up"), 126 ("found, but it cannot be executed") and 127 ("not
found"). In the shell::

    sh -c 'kill -KILL $$'; echo $?      # 137
    nonexistent-command; echo $?        # 127
"""

import os
import signal

from contained.errors import ContainedError
from contained.units import format_limit

#: Docker's "the runtime itself failed": the container could not be set up
EXIT_SETUP_FAILED = 125
#: the command exists but cannot be executed (a directory, no x bit), as in a shell
EXIT_NOT_EXECUTABLE = 126
#: the command was not found, as in a shell
EXIT_NOT_FOUND = 127
#: a shell reports a command killed by signal N as 128 + N
EXIT_SIGNAL_BASE = 128
#: killed by SIGKILL: the OOM killer, `stop` after its timeout, an interrupt
EXIT_KILLED = EXIT_SIGNAL_BASE + signal.SIGKILL


class CommandFailed(ContainedError):
    """The command could not be started (not found, not executable, unknown user...)."""

    def __init__(self, exit_status: int, message: str):
        super().__init__(message)
        self.exit_status = exit_status


class ContainerSetupFailed(ContainedError):
    """A step of building the container failed (the message names the step)."""


def describe(error: BaseException) -> str:
    """An error as one line: ours and the OS's say enough, anything else adds its type."""
    if isinstance(error, (ContainedError, OSError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(status):
        return EXIT_SIGNAL_BASE + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def oom_message(limit: int | None) -> str:
    return f"killed: out of memory, limit {format_bytes(limit)}"


#: a memory limit as it was written: 16M, 1G, 512K (none without one)
format_bytes = format_limit
