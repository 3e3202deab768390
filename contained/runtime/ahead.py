"""The CLI's worker, forked before the CLI knows its request: the runtime imports on the other CPU.

Taught beside notebook 06 (what ``contained run`` does underneath); there is no shell equivalent.
`contained run` and `contained exec` are mostly imports: the CLI's own (argparse, the options,
the image store, the spec) and the runner's (the steps, PID 1's code, seccomp). So the CLI
forks its worker first thing (`fork_worker`), once it has imported only what both need: the
worker forgets the caller at once (`client._forget_the_caller`: its environment and every
descriptor but its socket), then imports the runner and builds the default seccomp filter
(`seccomp.prepare_default`) while the CLI parses its options and resolves the image. The
request then comes over the socket with its descriptors, as a server's spare receives its own
(`contained.runtime.server`), and the worker does it (`runner.handle`). Measured by
benchmarks/cli_startup.py: the two halves take about as long.
"""

import os
import signal
import socket


class Worker:
    """A forked worker waiting for one request; `close` it when done (``contextlib.closing``).

    Closing an unused worker (``--help``, a bad option, an unknown image) closes its socket:
    it sees end of file and exits, and is reaped here, so that nothing is left behind.
    """

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            _serve_once(theirs)  # never returns
        theirs.close()
        self._sock: socket.socket | None = ours
        self.pid: int | None = pid

    def hand(self, request: dict, fds: list[int]) -> int | None:
        """Send it the request and its descriptors; its pid, to be reaped by the caller, or
        None when it can't take one (used already, or died: then it is reaped here)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return None
        from contained.runtime import wire

        pid, self.pid = self.pid, None
        try:
            with sock:
                wire.send_request(sock, request, fds)
            return pid
        except OSError:
            os.waitpid(pid, 0)
            return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            os.waitpid(self.pid, 0)
            self.pid = None


def fork_worker() -> Worker:
    """Import what both processes need (once, here), then fork the worker: the rest, each
    imports for itself at the same time (the CLI: argparse, its options, the image store)."""
    from contained.images import trees  # noqa: F401
    from contained.runtime import cgroups, client, process, seccomp_profile, state  # noqa: F401

    return Worker()


def _serve_once(sock: socket.socket) -> None:
    """The worker: forget the caller, import the runtime, do the one request, exit."""
    code = 1
    try:
        # An interrupt is the CLI's to act on: it sends the KILL marker once the request runs.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from contained.runtime import client

        client._forget_the_caller([sock.fileno()])
        from contained.runtime import runner, seccomp, wire

        seccomp.prepare_default()  # while the CLI is still parsing: most runs use this filter
        received = wire.receive_request(sock)
        sock.close()
        code = 0 if received is None else runner.handle(*received)
    finally:
        os._exit(code)  # never back into the CLI's code
