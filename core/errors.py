"""The errors a user sees: one line each, and the one line kept of any exception."""

from __future__ import annotations

import signal


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


#: the signal that stopped the run: SIGINT (Ctrl-C) unless SIGTERM's handler says otherwise
_STOPPED_BY = [signal.SIGINT]


def stopped() -> tuple[str, int]:
    """What stopped the run, as the words of its one line and its exit status: ``("interrupted
    (Ctrl-C)", 130)``, or ``("terminated (SIGTERM)", 143)`` after a SIGTERM (timeout, kill, a batch
    scheduler), 128 + the signal's number as a shell reports it."""
    n = _STOPPED_BY[0]
    if n in TERMINATING:
        return f"terminated ({signal.Signals(n).name})", 128 + int(n)
    return "interrupted (Ctrl-C)", 130


#: signals that stop a run as Ctrl-C does, each named in its one line: SIGTERM (timeout, kill, a batch
#: scheduler) and SIGHUP (the terminal closed)
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _on_sigterm(signum, frame):
    _STOPPED_BY[0] = signum
    raise KeyboardInterrupt


def drop_stdout() -> None:
    """Point stdout at /dev/null: its reader has gone (``... | head``) or it cannot be written (a full
    disk), so what is still buffered, and any later print, goes nowhere instead of raising again
    (Python's flush at exit would print "Exception ignored ... BrokenPipeError")."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout closed or not a file: nothing left to flush into
        pass


#: exit status where stdout's reader went away: 128 + SIGPIPE, as a shell reports a process the
#: signal ended (``yes | head``)
BROKEN_PIPE_STATUS = 141


class StdoutError(OSError):
    """Standard output could not be written (a full disk, an I/O error; a closed pipe stays a
    BrokenPipeError)."""


class _Stdout:
    """``sys.stdout`` whose write errors other than a closed pipe are :class:`StdoutError`, so a
    tool tells them from a failing output file (:func:`guard_stdout`)."""

    def __init__(self, inner):
        self._inner = inner

    def _call(self, name, *args):
        try:
            return getattr(self._inner, name)(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StdoutError(e.errno, e.strerror or str(e)) from None

    def write(self, text):
        return self._call("write", text)

    def flush(self):
        return self._call("flush")

    def writelines(self, lines):
        return self._call("writelines", lines)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def guard_stdout() -> None:
    import os
    import sys

    if sys.stdout is None:  # started with stdout closed (>&-): what it prints goes nowhere, as into /dev/null
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout, for its whole life
    if not isinstance(sys.stdout, _Stdout):
        sys.stdout = _Stdout(sys.stdout)


def quiet_broken_pipe(main, *args, name: str = "stepbench"):
    """``main(*args)``, then stdout flushed; where stdout's reader has gone (``stepbench --help |
    head -1``) nothing is printed and the status is :data:`BROKEN_PIPE_STATUS`, not a
    BrokenPipeError traceback; where stdout cannot be written (``> /dev/full``), one line on stderr
    and status 1. A ``SystemExit`` (argparse's ``--help``) is returned as its code."""
    import sys

    guard_stdout()
    try:
        try:
            status = main(*args)
        except SystemExit as e:
            status = e.code
        sys.stdout.flush()
    except BrokenPipeError:
        drop_stdout()
        return BROKEN_PIPE_STATUS
    except StdoutError as e:
        drop_stdout()
        print(f"{name}: standard output cannot be written ({e.strerror}): send it elsewhere (> FILE), the "
              "files this command writes are written before it prints", file=sys.stderr, flush=True)
        return 1
    return status


def run_main(main, name: str) -> None:
    """``sys.exit(main())`` for a tool's ``python -m`` entry: Ctrl-C ends it with one line and
    status 130 (what it wrote is whole: outputs are written atomically); a reader of stdout that goes
    away (``| head``) ends it quietly (:func:`quiet_broken_pipe`)."""
    import sys

    from core.paths import autoload_disabled

    try:  # the environment's switches, before anything reads them
        autoload_disabled()
    except ValueError as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    raise_on_ctrl_c()  # SIGTERM and SIGHUP end it as Ctrl-C does: one line, 143 or 129
    try:
        sys.exit(quiet_broken_pipe(main, name=name))
    except KeyboardInterrupt:
        ignore_further_ctrl_c()
        words, status = stopped()
        print(f"{name}: {words}; nothing half-written was left", file=sys.stderr, flush=True)
        sys.exit(status)


def exit_on_ctrl_c_while_starting(name: str) -> None:
    """Until :func:`raise_on_ctrl_c`: Ctrl-C ends the process at once with one line and status 130.
    While Python imports torch, numpy and Hydra, a KeyboardInterrupt can be swallowed by an import
    guard (the row then ran to the end), turned into another error (a RecursionError in a lazy
    import, a failed row) or abort the interpreter; nothing has been measured or written yet, so
    leaving at once loses nothing."""
    import os

    def handler(signum, frame):
        try:
            os.write(2, f"{name}: interrupted (Ctrl-C) while starting: nothing was measured\n".encode())
        finally:
            os._exit(130)

    signal.signal(signal.SIGINT, handler)


def raise_on_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt again (Python's own handler): from here on the code that runs
    rows stops its children and says what was kept."""

    signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM (timeout, kill, a batch scheduler) stops rows the same way: a sweep's row child, in a
    # session of its own, is stopped with it instead of living on and writing a row after the sweep
    for sig in TERMINATING:
        signal.signal(sig, _on_sigterm)


def ignore_further_ctrl_c() -> None:
    """Called first where a Ctrl-C is handled: a second one (a user pressing it twice, ``timeout``
    signalling the process and then its group) no longer interrupts the exit with a traceback."""
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, *TERMINATING):
            signal.signal(sig, signal.SIG_IGN)


#: process groups of the children running now (core.sweep.stream_child): ended with the process
#: where :func:`watch_ctrl_c` has to leave without the normal clean-up
LIVE_GROUPS: set[int] = set()


def watch_ctrl_c(name: str, grace_s: float = 10.0) -> None:
    """Ctrl-C ends a row within ``grace_s`` even where the main thread sits in one long kernel
    (Python runs its handler, which raises KeyboardInterrupt, only when that call returns; a CPU
    attention call can take many minutes). The signal's arrival is written to a pipe by the C-level
    handler (``signal.set_wakeup_fd``); a daemon thread reading it waits ``grace_s`` for the normal
    exit and otherwise leaves with one line and status 130. Rows that finished are written whole
    (:func:`core.results.append_row`); the one in flight is not. Torch's kernels release the GIL,
    so the thread runs while they do."""
    import os
    import threading
    import time

    if threading.current_thread() is not threading.main_thread():
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
        return

    def watch():
        while not (got := {signal.SIGINT, *TERMINATING} & set(os.read(r, 64))):
            pass
        for sig in TERMINATING:
            if sig in got:
                _STOPPED_BY[0] = sig
        time.sleep(grace_s)
        try:
            for pgid in list(LIVE_GROUPS):  # a peer or helper child must not outlive the row
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except OSError:
                    pass
            os.write(2, f"{name}: {stopped()[0]} inside a long kernel: stopped; rows that finished are in the "
                        "results\n".encode())
        finally:
            os._exit(stopped()[1])

    threading.Thread(target=watch, name="ctrl-c-watch", daemon=True).start()
