"""Streaming a container's output into the notebook as it arrives, and measuring it meanwhile.

Taught in notebook 06 (what ``%%container`` does underneath). The cell's command writes into
pipes this kernel reads with select(), as IPython's ``%%bash`` streams a subprocess, next to the
runner's socket that brings the command's result::

    mkfifo out err; contained run busybox sh -c "$CELL" >out 2>err & cat out & cat err >&2

Ctrl-C (the kernel's stop button) kills the command and waits for its result, so that a
throwaway container is gone before the cell ends; the caller is told with `CellInterrupted`.
"""

import codecs
import os
import select
import sys
import time
from pathlib import Path

from contained.errors import ContainedError
from contained.records import field, record
from contained.runtime import container

# How often --stats and `%container stats` read the cgroup; also the select() timeout.
SAMPLE_INTERVAL = 0.1
# After a kill (interrupt, --timeout), how long to wait for the runner's result.
KILL_GRACE = 5.0
# After the result, how long to keep draining output a background process may still write.
DRAIN_LIMIT = 0.25
# After the result, how long to wait for a throwaway container's teardown (unmounting the
# overlay, removing the cgroup and files): the cell ends when the container is gone, so that
# `%container ps` in the next cell does not list it.
SETTLE_LIMIT = 10.0
SETTLE_POLL = 0.01
READ_SIZE = 65536
# What --out/--err keep, in characters: the kernel holds it all in memory, and a container
# limited to 16M can still print gigabytes. The rest is read and dropped, and the cell says so.
CAPTURE_LIMIT = 64 << 20


class CellInterrupted(Exception):
    """Ctrl-C stopped the command, and a throwaway container is gone (raised after the
    cleanup); the magic shows it as its one-line `Interrupted`."""



class OutputStream:
    """One of the container's output pipes, decoded as UTF-8 however the bytes are split."""

    def __init__(self, fd: int, write, capture: bool):
        self.fd = fd
        self._write = write  # where decoded text goes (sys.stdout.write, looked up late)
        self.capture = capture
        self.captured: list[str] = []
        self.kept = 0  # characters in `captured`, at most CAPTURE_LIMIT
        self.dropped = 0  # characters read after that, and thrown away
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bool:
        """Read what is there; False at end of file."""
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return True
        self._emit(self._decoder.decode(chunk, final=not chunk))
        return bool(chunk)

    def drain(self, limit: float = DRAIN_LIMIT) -> None:
        """Read what is immediately available, never waiting for an end of file: a
        background process in a named container may hold the pipe open forever."""
        os.set_blocking(self.fd, False)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._emit(self._decoder.decode(chunk))

    def close(self) -> None:
        self._emit(self._decoder.decode(b"", final=True))
        os.close(self.fd)

    def text(self) -> str:
        return "".join(self.captured)

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.capture:
            room = max(CAPTURE_LIMIT - self.kept, 0)
            self.captured.append(text[:room])
            self.kept += min(len(text), room)
            self.dropped += max(len(text) - room, 0)
        else:
            self._write(text)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


@record
class Sampler:
    """Reads a container's cgroup usage every `SAMPLE_INTERVAL` seconds while a cell runs."""

    container_id: str
    samples: list = field(default_factory=list)  # (seconds since start, cgroups.Usage)
    _group: object = None
    _start: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def sample(self) -> None:
        now = time.monotonic()
        if self.samples and now - self._last < SAMPLE_INTERVAL:
            return
        if self._group is None:
            self._group = container.cgroup_of(self.container_id)
            if self._group is None:
                return
        try:
            usage = self._group.usage()
        except (OSError, ContainedError):
            return  # the group went away with the container
        self._last = now
        self.samples.append((now - self._start, usage))


@record
class Outcome:
    """How a cell's command ended, as seen from the magic."""

    result: container.RunResult | None
    timed_out: bool = False


def pump(execution: container.Execution, streams: list[OutputStream], *,
         timeout: float | None = None, sampler: Sampler | None = None,
         until: float | None = None) -> Outcome:
    """Copy output as it arrives until the command's result is in, then drain and return.

    `timeout` (seconds from now) kills the command; `until` (a monotonic time) gives up
    waiting, returning an outcome without a result.
    """
    open_streams = list(streams)
    deadline = time.monotonic() + timeout if timeout is not None else None
    timed_out = False
    # After an interrupt this runs again, possibly with the result already in.
    result = execution.wait() if execution.request.result is not None else None
    while result is None:
        now = time.monotonic()
        if until is not None and now >= until:
            break
        if deadline is not None and not timed_out and now >= deadline:
            timed_out = True
            execution.kill()
        wait = _select_timeout(now, deadline if not timed_out else None, until, sampler)
        readable, _, _ = select.select([execution, *open_streams], [], [], wait)
        for stream in readable:
            if stream is not execution and not stream.read():
                open_streams.remove(stream)
        if execution in readable:
            result = execution.poll()
        if sampler is not None:
            sampler.sample()
    for stream in open_streams:
        stream.drain()
    return Outcome(result, timed_out)


def _select_timeout(now, deadline, until, sampler) -> float | None:
    waits = [t - now for t in (deadline, until) if t is not None]
    if sampler is not None:
        waits.append(SAMPLE_INTERVAL)
    return max(0.0, min(waits)) if waits else None


def run_streaming(start, *, capture_out: bool = False, capture_err: bool = False,
                  explain: bool = False, timeout: float | None = None,
                  stats: bool = False) -> tuple[Outcome, list[OutputStream], Sampler | None]:
    """Start a command with `start(stdin, stdout, stderr, explain)` and stream its output.

    Ctrl-C (the kernel's stop button) kills the command, waits for its result and for a
    throwaway container's teardown, then raises `CellInterrupted`.
    """
    pipes = [os.pipe(), os.pipe()] + ([os.pipe()] if explain else [])
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    streams = [OutputStream(pipes[0][0], _stdout, capture_out),
               OutputStream(pipes[1][0], _stderr, capture_err)]
    if explain:
        streams.append(OutputStream(pipes[2][0], _stderr, False))
    execution = None
    try:
        execution = start(null, pipes[0][1], pipes[1][1], pipes[2][1] if explain else None)
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    finally:
        # The runner holds its own copies now; ours must go so that end of file can happen.
        os.close(null)
        for _, write_end in pipes:
            os.close(write_end)
    sampler = Sampler(execution.spec.id) if stats else None
    try:
        try:
            outcome = pump(execution, streams, timeout=timeout, sampler=sampler)
        except KeyboardInterrupt:
            execution.kill()
            _wait_after_kill(execution, streams)
            settle(execution)
            raise CellInterrupted() from None
    finally:
        for stream in streams:
            stream.close()
    settle(execution)
    return outcome, streams, sampler


def _wait_after_kill(execution, streams) -> None:
    """Wait (briefly) for the result of a killed command; a second Ctrl-C does not stop this."""
    until = time.monotonic() + KILL_GRACE
    while time.monotonic() < until:
        try:
            pump(execution, streams, until=until)
            return
        except KeyboardInterrupt:
            execution.kill()


def settle(execution: container.Execution, limit: float = SETTLE_LIMIT) -> bool:
    """Wait until a throwaway container is torn down (its directory gone); True once it is.

    The runner sends the result first and unmounts after: without this, the next cell's
    `%container ps` would list a container whose command has ended. A second Ctrl-C here stops
    only the waiting; the runner finishes the teardown anyway.
    """
    if not execution.spec.remove:
        return True
    directory = Path(execution.spec.directory)
    deadline = time.monotonic() + limit
    try:
        while directory.exists() and time.monotonic() < deadline:
            time.sleep(SETTLE_POLL)
    except KeyboardInterrupt:
        pass
    return not directory.exists()
