"""The client's relay: a container gets pipes or a pty of its own, never the caller's files.

Taught in notebook 06 (what ``contained run`` does with your terminal). Handing a container
the caller's own stdin/stdout/stderr hands it the caller's files: through ``/proc/self/fd/1``
its root reopens (and truncates) the file the caller redirected into, and a background
process keeps the caller's terminal and reads what is typed at the host prompt after the
command has returned. So, like Docker's client, ``contained run``/``exec`` give the container
pipes and copy them (the notebook magic does the same with its cells' pipes). In shell terms::

    contained run busybox CMD           ≈  CMD </dev/null 2> >(cat >&2) | cat
    contained run -i busybox CMD        ≈  cat | CMD 2> >(cat >&2) | cat
    contained run -t busybox CMD        ≈  stty raw; (a pty from the container's devpts) <-> cat

Without ``-i`` the container's stdin is /dev/null (Docker's habit). With ``-t`` the command
gets a new pty from the container's own devpts (its PID 1 opens it and passes the master
back over the reply socket); here the caller's terminal goes raw (restored on exit) and its
window size follows along (SIGWINCH). Ctrl-C without ``-t`` kills the command; with ``-t``
it is a byte like any other, for the command's terminal to turn into SIGINT.
"""

import fcntl
import os
import select
import signal
import struct
import termios
import time
import tty as termmodes

CHUNK = 65536
DRAIN_LIMIT = 1.0  # seconds to copy what is left once the command has ended


def attach(start, *, interactive: bool = False, terminal: bool = False,
           stdin: int = 0, stdout: int = 1, stderr: int = 2):
    """Start a command with `start(stdin, stdout, stderr)` and relay it; its `RunResult`.

    `start` gets the container's ends (pipes, or /dev/null); it returns an `Execution`. With
    `terminal`, `start` is given /dev/null and the command's pty master arrives on the
    execution (``execution.request.terminal``).
    """
    if terminal:
        return _attach_terminal(start, interactive, stdin, stdout)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    in_read, in_write = os.pipe() if interactive else (null, None)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        execution = start(in_read, out_write, err_write)
    except BaseException:
        for fd in (in_write, out_read, err_read):
            _close(fd)
        raise
    finally:
        # The container holds its own copies now; ours must go so that end of file can happen.
        for fd in {null, in_read, out_write, err_write}:
            os.close(fd)
    copies = [_Copy(out_read, stdout), _Copy(err_read, stderr)]
    if in_write is not None:
        copies.append(_Copy(stdin, in_write, feeds_container=True))
    return _relay(execution, copies)


class _Copy:
    """One direction of the relay: bytes from `source` to `sink`, never blocking on either.

    Output from the container is written to the caller (blocking there is fine: the container
    then waits on its full pipe); input to the container is kept in a buffer and written as
    the pipe takes it, so the two directions never wait on each other.
    """

    def __init__(self, source: int, sink: int, feeds_container: bool = False,
                 until_eof: bool = False):
        self.source, self.sink = source, sink
        self.feeds_container = feeds_container
        # A pty hands the command's last output to its master a moment after the command
        # wrote it (the kernel's flip buffer): wait for its end (EIO) rather than stop at
        # the first empty read.
        self.until_eof = until_eof
        self.pending = b""
        self.open = True
        if feeds_container:
            os.set_blocking(sink, False)

    def wants_read(self) -> bool:
        return self.open and not self.pending

    def wants_write(self) -> bool:
        return self.open and bool(self.pending)

    def read(self) -> None:
        try:
            chunk = os.read(self.source, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: a pty whose every holder has closed it
            chunk = b""
        if not chunk:
            self.finish()
        elif self.feeds_container:
            self.pending = chunk
            self.write()
        else:
            try:
                _write_all(self.sink, chunk)
            except BrokenPipeError:
                # The caller's reader has gone (`| head`): close the container's pipe, so
                # its writer gets SIGPIPE as it would have without us in between.
                self.finish()

    def write(self) -> None:
        try:
            written = os.write(self.sink, self.pending)
        except BlockingIOError:
            return
        except BrokenPipeError:  # the command closed its stdin: stop feeding it
            self.finish()
            return
        self.pending = self.pending[written:]

    def finish(self) -> None:
        """End this direction: the container's end of a pipe is closed (EOF or SIGPIPE)."""
        if self.open:
            self.open = False
            os.close(self.sink if self.feeds_container else self.source)

    def drain(self, deadline: float) -> None:
        """Copy what is already there, never waiting for an end of file: a background
        process in a named container may hold the pipe open forever."""
        if not self.open or self.feeds_container:
            return
        os.set_blocking(self.source, False)
        while self.open and (left := deadline - time.monotonic()) > 0:
            try:
                chunk = os.read(self.source, CHUNK)
            except BlockingIOError:
                if not self.until_eof:
                    break
                select.select([self.source], [], [], left)
                continue
            except OSError:
                chunk = b""
            if not chunk:
                break
            try:
                _write_all(self.sink, chunk)
            except BrokenPipeError:
                break


def _relay(execution, copies: list[_Copy]):
    """Copy until the command's result is in, then what is left; Ctrl-C kills the command."""
    interrupted = False
    result = None
    try:
        while result is None:
            try:
                readers = [c.source for c in copies if c.wants_read()]
                writers = [c.sink for c in copies if c.wants_write()]
                readable, writable, _ = select.select([execution, *readers], writers, [])
                for copy in copies:
                    if copy.wants_write() and copy.sink in writable:
                        copy.write()
                    elif copy.wants_read() and copy.source in readable:
                        copy.read()
                if execution in readable:
                    result = execution.poll()  # a failure to start is raised, after the drain
            except KeyboardInterrupt:
                interrupted = True
                execution.kill()  # the result follows; keep relaying until it does
    finally:
        deadline = time.monotonic() + DRAIN_LIMIT
        for copy in copies:
            copy.drain(deadline)
            if copy.open:
                copy.finish()
    if interrupted:
        raise KeyboardInterrupt
    return result


def _attach_terminal(start, interactive: bool, stdin: int, stdout: int):
    """``-t``: the caller's terminal, raw, relayed to the command's pty (its master)."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        execution = start(null, null, null)
    finally:
        os.close(null)
    execution.wait_started()
    master = execution.request.terminal
    if master is None:
        raise RuntimeError("[internal error] the container's pty did not arrive")
    saved = _raw(stdin) if interactive else None
    previous = signal.signal(signal.SIGWINCH, lambda *_: copy_window_size(stdin, master))
    try:
        copy_window_size(stdin, master)
        copies = [_Copy(master, stdout, until_eof=True)]
        if interactive:
            copies.append(_Copy(stdin, os.dup(master), feeds_container=True))
        return _relay(execution, copies)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def window_size(fd: int) -> list[int] | None:
    """[rows, columns] of the terminal on `fd`, or None if it is not one."""
    try:
        rows, columns, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return [rows, columns]


def copy_window_size(source: int, master: int) -> None:
    """The caller's terminal size onto the container's pty (the command gets SIGWINCH)."""
    size = window_size(source)
    if size:
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
        except OSError:
            pass  # the pty has gone with the command


def _raw(fd: int):
    """Put the caller's terminal in raw mode (keys go to the command as typed); the saved
    mode to restore, or None if `fd` is not a terminal."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        return None
    termmodes.setraw(fd, termios.TCSANOW)
    return saved


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
