"""The errors a user sees: one line each, and the one line kept of any exception."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: reported as one line, exit status 2."""


class NotHereError(UserError):
    """A row refused because this machine cannot run it (it would not fit in GPU or host memory, a
    backend or a GPU it needs is missing), not because the input is wrong: in a sweep it is a failed
    row beside the others (:mod:`core.sweepcheck` lets it through)."""


class RowError(RuntimeError):
    """A row that failed for a reason its one line states (a helper process that died, ...): the
    row is a failed row with that line, and no traceback of stepbench's is printed."""


def first_line(e: BaseException, with_type: bool | None = None) -> str:
    """The one line a failed row or a refusal keeps of an exception: its message's first line, after
    its type's name (``with_type``; by default for anything but a :class:`UserError`)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if with_type is None:
        with_type = not isinstance(e, UserError)
    return f"{type(e).__name__}: {first}".strip().rstrip(":") if with_type else first


def run_main(main, name: str) -> None:
    """``sys.exit(main())`` for a tool's ``python -m`` entry: Ctrl-C ends it with one line and
    status 130 (what it wrote is whole: outputs are written atomically)."""
    import sys

    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"{name}: interrupted (Ctrl-C); nothing half-written was left", file=sys.stderr, flush=True)
        sys.exit(130)


def exit_on_ctrl_c_while_starting(name: str) -> None:
    """Until :func:`raise_on_ctrl_c`: Ctrl-C ends the process at once with one line and status 130.
    While Python imports torch, numpy and Hydra, a KeyboardInterrupt can be swallowed by an import
    guard (the row then ran to the end), turned into another error (a RecursionError in a lazy
    import, a failed row) or abort the interpreter; nothing has been measured or written yet, so
    leaving at once loses nothing."""
    import os
    import signal

    def handler(signum, frame):
        try:
            os.write(2, f"{name}: interrupted (Ctrl-C) while starting: nothing was measured\n".encode())
        finally:
            os._exit(130)

    signal.signal(signal.SIGINT, handler)


def raise_on_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt again (Python's own handler): from here on the code that runs
    rows stops its children and says what was kept."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
