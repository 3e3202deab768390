"""Graduated hints: the one mechanism every exercise checker of the workbook goes through.

Used by every notebook (00-08) through `contained.workbook.exercises`. Every checker returns a
`Feedback`: true when right, printed as one or a few lines. An answer left as ``None`` gets "Not
answered yet" (`unanswered`), never an error, so a notebook runs top to bottom.

Hints are graduated (`exercise`): the first wrong answer to an exercise also names the idea to
think about, the second points at the cell or file to look at, and only an explicit
``exercises.solution("02.1")`` prints the answer. A placeholder is never itself a right answer.
A predict-then-run question (`prediction`, `ask`, `check_prediction`) is asked *before* the
cell whose output answers it, and earns hints the same way.
"""

import functools

from contained.records import record


@record(frozen=True)
class Feedback:
    """A checker's verdict: `ok`, what to tell the learner, and the hint earned so far."""

    ok: bool
    message: str
    answered: bool = True
    hint: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = f"{'✔ Right' if self.ok else '✘ Not yet'}: {self.message}"
        return f"{verdict}\n{self.hint}" if self.hint else verdict

    __repr__ = __str__


def right(message: str) -> Feedback:
    return Feedback(True, message)


def wrong(message: str) -> Feedback:
    return Feedback(False, message)


def unanswered(how: str) -> Feedback:
    """A "not answered yet" that says `how` to answer: neither right nor a miss."""
    return Feedback(False, f"not answered yet — {how}", answered=False)


# ---------------------------------------------------------------------------------------------
# Graduated hints


@record(frozen=True)
class Hints:
    """What an exercise reveals, one step per wrong answer."""

    concept: str   # first miss: the idea to think about, not the answer
    where: str     # second miss: the cell or file that shows it
    solution: str  # only `solution(key)` prints this


#: Every exercise by key ("NN.M": notebook NN, exercise M), filled in by `exercise`.
EXERCISES: dict[str, Hints] = {}
#: Wrong answers so far in this kernel, by exercise key.
_misses: dict[str, int] = {}


def exercise(key: str, *, concept: str, where: str, solution: str):
    """Make a checker exercise `key`: its wrong answers earn graduated hints.

    The checker itself only judges; this wrapper counts the misses (a "not answered yet" is
    not one) and attaches the hint earned: the concept after the first, the place to look
    after the second, and from then on how to ask for the solution.
    """
    EXERCISES[key] = Hints(concept, where, solution)

    def wrap(checker):
        @functools.wraps(checker)
        def checked(*args, **kwargs) -> Feedback:
            return graded(key, checker(*args, **kwargs))

        checked.exercise = key
        return checked

    return wrap


def graded(key: str, feedback: Feedback) -> Feedback:
    """`feedback` for exercise `key`, with the hint its misses so far have earned."""
    if feedback.ok or not feedback.answered:
        return feedback
    _misses[key] = _misses.get(key, 0) + 1
    return Feedback(False, feedback.message, hint=hint(key, _misses[key]))


def hint(key: str, misses: int) -> str:
    """The hint for exercise `key` after `misses` wrong answers."""
    hints = EXERCISES[key]
    if misses <= 1:
        return f"Hint 1 — the idea: {hints.concept}"
    return (f"Hint 1 — the idea: {hints.concept}\nHint 2 — where to look: {hints.where}\n"
            f"Still stuck? `exercises.solution({key!r})` prints the answer.")


def solution(key: str) -> str:
    """Print (and return) the answer to exercise `key` ("02.1"): only when asked for."""
    key = str(key)
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r}; the exercises are {', '.join(sorted(EXERCISES))}")
    text = f"Exercise {key}, a solution: {EXERCISES[key].solution}"
    print(text)
    return text


def forget_misses() -> None:
    """Start the hints over (a fresh kernel does the same)."""
    _misses.clear()


# ---------------------------------------------------------------------------------------------
# Predict, then run: a question asked *before* the cell that shows the answer


@record(frozen=True)
class Prediction:
    """A multiple-choice question about what the next cell will do, with a reply per choice:
    the wrong replies say what the learner's model of the kernel got wrong."""

    question: str
    choices: dict[str, str]   # letter → the choice
    right: str                # the right letter
    replies: dict[str, str]   # letter → what that choice shows about the idea


PREDICTIONS: dict[str, Prediction] = {}


def prediction(key: str, question: str, choices: dict[str, str], right_choice: str,
               replies: dict[str, str], *, concept: str, where: str) -> Prediction:
    """Register a predict-then-run question as exercise `key` (it earns hints like any other)."""
    found = Prediction(question, choices, right_choice, replies)
    PREDICTIONS[key] = found
    EXERCISES[key] = Hints(concept, where, f"({right_choice}) {choices[right_choice]}. "
                                           f"{replies[right_choice]}")
    return found


def ask(key: str) -> None:
    """Print prediction `key`'s question and its choices (the cell before the experiment)."""
    found = PREDICTIONS[key]
    print(f"{key} Predict: {found.question}")
    for letter, choice in sorted(found.choices.items()):
        print(f"  ({letter}) {choice}")


def check_prediction(key: str, answer: str | None) -> Feedback:
    """Judge the letter the learner predicted for question `key`; the reply explains why, and
    the next cell's output is the proof."""
    found = PREDICTIONS[key]
    if answer is None:
        return unanswered(f"set answer to one letter, {', '.join(found.choices)}, *before* "
                           "running the next cell")
    letter = str(answer).strip().lower().strip("()")
    if letter not in found.choices:
        return Feedback(False, f"{answer!r} is not one of {', '.join(found.choices)}",
                        answered=False)
    if letter == found.right:
        return right(f"({letter}) — {found.replies[letter]} Run the next cell to see it.")
    return graded(key, wrong(f"({letter}) is not what happens: {found.replies[letter]} Run the "
                             "next cell and compare."))
