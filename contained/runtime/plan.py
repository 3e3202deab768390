"""One description of the steps, two uses: run them, or show them as shell commands.

Every runtime step (mount the overlay, write a cgroup limit, pivot_root, ...) is a `Step`: the
shell command a student would type for it, the reason it is needed, and the Python that does it.
``--explain`` prints each step's shell line as the step runs; ``--dry-run`` prints them without
running anything. Because both come from the same `Step` objects, the explanation can never
drift from what really happens — this is how notebook 05's hand-typed commands map onto the
package.
"""

from collections.abc import Callable

from contained.records import record


@record(frozen=True)
class Step:
    """A runtime step: `shell` is its shell equivalent, `why` the reason, `run` the action."""

    shell: str
    why: str = ""
    run: Callable[[], object] | None = None

    def explain(self) -> str:
        """The step as a commented shell line, as ``--explain`` prints it."""
        return f"{self.shell}  # {self.why}" if self.why else self.shell


def run_steps(steps: list[Step], explain: Callable[[str], None] | None = None) -> None:
    """Run steps in order, reporting each one's shell line through `explain` before it runs."""
    for step in steps:
        if explain is not None:
            explain(step.explain())
        if step.run is not None:
            step.run()
