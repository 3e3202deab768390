"""Notebook 06's exercises (the %%container magic): a named container's file, its memory limit,
and zombies under a PID 1 that never waits.

06.1 `check_container_file` reads the file in the running container (at most
`CHECKED_FILE_LIMIT` bytes of it); 06.2 `check_memory_limit` reads its spec; 06.3
`check_zombies` judges a pair of numbers. The commands they stand for::

    contained exec NAME cat PATH          # the learner's file, inside the container
    contained inspect NAME                # the memory limit it was created with
"""

import os

from contained.errors import ContainedError
from contained.runtime import cgroups
from contained.workbook.exercises.hints import Feedback, exercise, right, unanswered, wrong

#: What a checker reads of a learner's file in a container: an answer is a line of text, and a
#: file linked to /dev/zero must not fill the host's memory or disk.
CHECKED_FILE_LIMIT = 4 << 20


@exercise("06.1",
          concept="a throwaway container's files go with it; a named one (--name) keeps its "
                  "upper directory, and later cells with the same name run inside it",
          where="\"A named container: files and processes persist\" in notebook 06",
          solution="%%container busybox --name ex06\necho 42 > /answer.txt")
def check_container_file(name: str, path: str, content: str) -> Feedback:
    """A running named container `name` has a file `path` containing `content`
    (``contained exec NAME cat PATH``)."""
    from contained.runtime import container

    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name!r}: start one with "
                     f"`%%container busybox --name {name}`")
    if not found.running:
        return wrong(f"container {name} exists but is not running: remove it "
                     f"(`%container rm {name}`) and start it again")
    status, data = _read_in_container(name, path, CHECKED_FILE_LIMIT)
    if data is None:
        return wrong(f"{path} in {name} is bigger than {CHECKED_FILE_LIMIT >> 10} KiB (only that "
                     f"much was read): an answer is a line of text; is it a link to a device "
                     f"such as /dev/zero?")
    if status != 0:
        return wrong(f"{path} does not exist in {name}: was the file made in a throwaway "
                     f"container (a cell without --name {name})? Throwaway files vanish")
    text = data.decode(errors="replace")
    if text.strip() != content:
        return wrong(f"{path} contains {text.strip()!r}, not {content!r}")
    return right(f"{path} in {name} says {content!r}; it will stay until `%container rm "
                 f"{name}`.")


def _read_in_container(name: str, path: str, limit: int) -> tuple[int | None, bytes | None]:
    """``contained exec NAME cat PATH``, keeping at most `limit` bytes on the host: (status,
    content), content None when there was more (the command is then killed, unread)."""
    from contained.runtime import container

    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        execution = container.start_exec(name, ["cat", path], stdin=null, stdout=write_end,
                                          stderr=null)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # PID 1 holds its own copy: ours must go for end of file to come
        os.close(null)
    with open(read_end, "rb") as pipe:
        data = pipe.read(limit + 1)  # up to limit + 1 bytes, or end of file
        if len(data) > limit:
            execution.kill()
            execution.wait()
            return None, None
    return execution.wait().status, data


@exercise("06.2",
          concept="limits are set when a container is created: they are its cgroup's files",
          where="\"Limits\" in notebook 06: the options are contained run's",
          solution="%%container busybox --name ex06-small --memory 24M\ntrue")
def check_memory_limit(name: str, limit: str) -> Feedback:
    """Container `name` was created with memory limit `limit` (``contained inspect NAME``)."""
    from contained.runtime import container

    try:
        found = container.get(name)
    except ContainedError:
        return wrong(f"there is no container named {name!r}: create it with "
                     f"`%%container busybox --name {name} --memory {limit}`")
    expected = cgroups.parse_memory(limit)
    actual = found.spec.memory if found.spec else None
    if actual == expected:
        return right(f"{name} may use at most {limit} ({expected} bytes).")
    if actual is None:
        return wrong(f"{name} has no memory limit: limits are set when a container is created; "
                     f"remove it and create it again with --memory {limit}")
    return wrong(f"{name}'s limit is {actual} bytes, not {limit}: remove it and create it "
                 f"again with --memory {limit}")


@exercise("06.3",
          concept="an orphan is re-parented to PID 1, and a process that exits stays a zombie "
                  "until its parent calls wait()",
          where="notebook 06, \"PID 1\": the cell that lists PID 1's children from the host, "
                "and the same three orphans under contained-init",
          solution="answer = (5, 0): sleep never calls wait(), contained-init reaps them all")
def check_zombies(answer) -> Feedback:
    """Zombies left by 5 exited orphans under a PID 1 that never waits, and under an init."""
    if answer is None:
        return unanswered("set answer to two numbers, e.g. (2, 1)")
    try:
        under_sleep, under_init = (int(n) for n in answer)
    except (TypeError, ValueError):
        return wrong(f"{answer!r} is not two numbers: write (zombies under sleep, zombies "
                     "under contained-init)")
    if under_sleep != 5:
        return wrong(f"under sleep: {under_sleep}? Every orphan becomes PID 1's child, and "
                     "each one that exits stays a zombie until PID 1 waits for it; sleep never "
                     "does")
    if under_init != 0:
        return wrong(f"under contained-init: {under_init}? It calls waitpid(-1) whenever a "
                     "child exits, orphans included")
    return right("5 zombies under sleep, none under contained-init: that is why containers "
                 "get an init (docker run --init, podman's catatonit, contained-init).")
