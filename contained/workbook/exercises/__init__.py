"""Exercise checkers: each notebook ends with exercises, and these say whether an answer is right.

Used by every notebook (00-08) as ``from contained.workbook import exercises`` then
``exercises.check_...(answer)``, ``exercises.ask("01.3")``, ``exercises.solution("02.1")``. A
checker looks at the learner's real result where there is one (a directory, a device file, a
running container, an image's digests), not only at a typed answer, and when something is wrong
it says what, in words a beginner understands, and what to try next. The shell equivalents of
what each one looks at are in its docstring.

This module is a facade over one module per notebook, named after it, and the one mechanism
they all go through:

======================  ========================================================================
`hints`                 `Feedback`, graduated hints (`exercise`, `solution`), predict-then-run
                        questions (`prediction`, `ask`, `check_prediction`)
`check_your_machine`    00: the cgroup layout and where cgroup2 is mounted
`namespaces`            01: new namespaces, a hostname of its own, PID 1 and SIGKILL
`sandbox`               01: where a learner's command runs when a checker runs it
`cgroups`               02: memory.max, cpu.max, CPU weights, soft limits
`overlay`               03: whiteouts, copy-up, work/
`images`                04: a layer blob's digest, a shared layer
`container_by_hand`     05: /dev/null, uname -r
`container_magic`       06: a named container's file, its memory limit, zombies
`safety`                07: a layer the unpacker refuses, the walls around root
`networking`            08: a third namespace on its own cable, a published port
======================  ========================================================================

Every checker returns a `Feedback`: true when right, printed as one or a few lines. An answer
left as ``None`` gets "Not answered yet", never an error, so a notebook runs top to bottom. The
first wrong answer to an exercise also names the idea to think about, the second points at the
cell or file to look at, and only an explicit ``exercises.solution("02.1")`` prints the answer.
Importing this module registers every exercise (`EXERCISES`, `PREDICTIONS`).
"""

from contained.workbook.exercises.cgroups import (
    check_cpu_max,
    check_cpu_share,
    check_memory_max,
    kernel_memory_bytes,
)
from contained.workbook.exercises.check_your_machine import CGROUP_MODES, check_cgroup_mode
from contained.workbook.exercises.container_by_hand import check_dev_null, check_kernel_release
from contained.workbook.exercises.container_magic import (
    check_container_file,
    check_memory_limit,
    check_zombies,
)
from contained.workbook.exercises.hints import (
    EXERCISES,
    PREDICTIONS,
    Feedback,
    ask,
    check_prediction,
    exercise,
    forget_misses,
    hint,
    prediction,
    solution,
)
from contained.workbook.exercises.images import check_layer_digest, check_shared_layer
from contained.workbook.exercises.namespaces import (
    check_new_namespaces,
    check_uts_command,
    kinds_in,
)
from contained.workbook.exercises.networking import check_published, check_third_namespace
from contained.workbook.exercises.overlay import check_whiteout, is_whiteout
from contained.workbook.exercises.safety import BOUNDARY_WALLS, check_boundary, check_layer_refused
from contained.workbook.exercises.sandbox import run_in_sandbox, run_in_user_namespace

__all__ = [
    # the mechanism
    "EXERCISES", "PREDICTIONS", "Feedback", "ask", "check_prediction", "exercise",
    "forget_misses", "hint", "prediction", "solution",
    # 00
    "CGROUP_MODES", "check_cgroup_mode",
    # 01
    "check_new_namespaces", "check_uts_command", "kinds_in", "run_in_sandbox",
    "run_in_user_namespace",
    # 02
    "check_cpu_max", "check_cpu_share", "check_memory_max", "kernel_memory_bytes",
    # 03
    "check_whiteout", "is_whiteout",
    # 04
    "check_layer_digest", "check_shared_layer",
    # 05
    "check_dev_null", "check_kernel_release",
    # 06
    "check_container_file", "check_memory_limit", "check_zombies",
    # 07
    "BOUNDARY_WALLS", "check_boundary", "check_layer_refused",
    # 08
    "check_published", "check_third_namespace",
]
