"""How a cell says that something went wrong: one line, never a traceback wall. Notebook 06.

IPython's habits, which ``%%container`` follows:

- a wrong option or argument is a `UsageError` (IPython shows it as one line);
- a command that ran and failed raises an exception of its own, as ``%%bash`` raises
  `subprocess.CalledProcessError`: here `ContainerFailed`, a subclass of it, so ``except
  CalledProcessError`` catches both. It stops "Run all"; ``--no-raise-error`` lets it pass;
- the stop button raises `Interrupted`, a `KeyboardInterrupt` (code that catches interrupts
  still does), after the container's command was killed.

IPython renders an exception through its ``_render_traceback_`` method when it has one: both
return their single line, e.g. ``ContainerFailed: exited with status 3``. In a shell, the same
facts are ``echo $?`` after the command, and 130 after Ctrl-C.
"""

import signal
import subprocess
import sys

from IPython.core.error import UsageError

from contained.jupyter.streaming import Outcome

INTERRUPTED = "the container was stopped"


class ContainerFailed(subprocess.CalledProcessError):
    """A cell's command exited non-zero, was killed for memory or by --timeout.

    `returncode` (also `status`) is the exit status (128+N for signal N), `oom` whether the
    kernel's OOM killer ended it, `cmd` the command; ``str()`` is the one-line message.
    """

    def __init__(self, message: str, status: int | None, cmd=None, *, oom: bool = False):
        super().__init__(status, cmd)
        self.message = message
        self.oom = oom

    @property
    def status(self) -> int | None:
        return self.returncode

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.returncode, self.cmd), {"oom": self.oom})

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self.message}"]


class Interrupted(KeyboardInterrupt):
    """The stop button (or Ctrl-C) ended a cell's command; shown as one line.

    A KeyboardInterrupt, as IPython's own interrupts are, so the cell fails and "Run all" stops
    (the kernel aborts the queued cells after any error), and ``except KeyboardInterrupt``
    still catches it.
    """

    def __init__(self, message: str = INTERRUPTED):
        super().__init__(message)

    def _render_traceback_(self) -> list[str]:
        return [f"Interrupted: {self}"]


def failure(message: str, **details) -> UsageError:
    """A one-line `UsageError` for a wrong option or argument; `details` stay on it for code.

    IPython shows exactly `UsageError` (not subclasses) without a traceback, so the package's
    errors about the cell's line (a bad volume, a missing image) are re-raised as one, keeping
    the original as __cause__.
    """
    error = UsageError(message)
    for key, value in details.items():
        setattr(error, key, value)
    return error


def exit_message(outcome: Outcome, timeout: float | None) -> str | None:
    """The one-line message for an ended command, or None if it succeeded."""
    result = outcome.result
    if result is None:
        return "the runner did not report how the command ended; run `%container gc`"
    if result.oom:
        return f"{result.message or 'killed: out of memory'} (status {result.status})"
    if outcome.timed_out:
        return f"killed after --timeout {timeout:g}s (status {result.status})"
    if result.status == 0:
        return None
    message = f"exited with status {result.status}"
    if result.status > 128:
        try:
            message += f" (killed by {signal.Signals(result.status - 128).name})"
        except ValueError:
            pass
    return message


def raise_if_failed(outcome: Outcome, cmd, *, timeout: float | None = None,
                    raise_error: bool = True) -> None:
    """Raise `ContainerFailed` for a failed command; with ``raise_error=False`` only say it."""
    message = exit_message(outcome, timeout)
    if message is None:
        return
    if not raise_error:
        print(f"contained: {message}", file=sys.stderr)  # said, but "Run all" goes on
        return
    result = outcome.result
    raise ContainerFailed(message, result.status if result else None, cmd,
                          oom=bool(result and result.oom))
