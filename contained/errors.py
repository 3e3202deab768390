"""Errors a user can do something about.

Every failure the package reports is a `ContainedError` (or a subclass named after what went
wrong): its message is one line that says what happened and, where there is one, what to do
next. The CLI prints it as ``contained: error: ...``; the magics raise it as a `UsageError`, so a
notebook shows one red line instead of a traceback wall.
"""


class ContainedError(Exception):
    """Base for every error the package reports to a user, as one line."""

    #: exit status of the CLI for this error (Docker uses 125 for "the runtime itself failed")
    exit_status = 125


class NeedsPrivileges(ContainedError):
    """A step needs root (or user namespaces) and this process has neither."""


class ContainerNotRunning(ContainedError):
    """The operation needs a running container (exec, attach, its network), and it has exited.

    One class for the runtime and the network alike, so a caller catches one name."""

    @classmethod
    def named(cls, name: str) -> "ContainerNotRunning":
        """Container `name` has exited (or its PID 1 is not the recorded one any more): the one
        message for every way into it."""
        return cls(f"container {name} is not running: start it again with `contained rm {name}`,"
                   f" then `contained run --name {name} ...`")
