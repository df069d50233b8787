"""Sweeps: many rows, each in a fresh child process; a bad, refused or crashed row becomes a
failed row and the sweep goes on. Re-running resumes (rows already done are skipped, up to
``repeats`` successful rows per key). :func:`run_child` is the one row runner of ``-m``,
``+sweep=`` and ``benchmarks/run_rows.py``; :class:`Progress` says how far a sweep is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.errors import LIVE_GROUPS, UserError, first_line
from core.measure import say

ROOT = Path(__file__).resolve().parent.parent
CHILD_ENV = "STEPBENCH_CHILD_ROW_ID"
#: the pid of the sweep that set CHILD_ENV (a row takes that id only where the sweep is its ancestor)
CHILD_OF_ENV = "STEPBENCH_CHILD_OF"
#: one id for every row of one invocation (a sweep's children inherit it; export it to make several
#: invocations on one machine one run): the report compares rows as "same call" by it
RUN_ENV = "STEPBENCH_RUN_ID"
#: the rows' schema: 3 since the plugins' labels and the model's implementation are stored (``impl``)
SCHEMA = 3


def run_id() -> str:
    """This invocation's run id (set in the environment on first use, so child rows share it)."""
    if not os.environ.get(RUN_ENV):
        os.environ[RUN_ENV] = uuid.uuid4().hex[:16]
    return os.environ[RUN_ENV]


def base_row(cfg_or_none, overrides: list[str] | None, row_id: str | None = None) -> dict:
    """The fields every row starts with: id, schema, time, run id, tag (and the overrides it ran)."""
    row = {"id": row_id or uuid.uuid4().hex, "schema": SCHEMA,
           "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": run_id(),
           "tag": getattr(cfg_or_none, "tag", "") if cfg_or_none is not None else ""}
    if overrides is not None:
        row["overrides"] = overrides
    return row


def failed_row(base: dict, cfg, error: str, r=None) -> dict:
    """A failed row with whatever labels are known (a row refused before it resolved still has
    its model, type, seq_len, AC and attention, so it reaches the report's Failed section)."""
    from core.resolve import row_labels

    labels = {}
    if cfg is not None:
        try:
            labels = row_labels(cfg, r, 1)
        except Exception:  # labels of a config that does not even compose
            labels = {}
    labels.setdefault("type", "?")
    labels.setdefault("model", " ".join(base.get("overrides", [])) or "?")
    return {**base, **labels, "status": "failed", "error": error}


def override_key(o: str) -> str:
    return o.lstrip("+~").split("=", 1)[0]


def merge_overrides(row: list[str], extra: list[str]) -> list[str]:
    """A sweep row's overrides with the command line's: the command line wins key by key (so
    ``+sweep=cpu_smoke +attn=fa2`` replaces each row's own ``+attn=...``)."""
    keys = {override_key(o) for o in extra}
    return [o for o in row if override_key(o) not in keys] + extra


# ---------------------------------------------------------------------------------- progress
class Ticker:
    """A line every ``every`` seconds while a long preparation runs (``what: i of n``), so it is
    never silent for minutes."""

    def __init__(self, total: int, what: str, every: float = 10.0):
        self.total, self.what, self.every = total, what, every
        self.start = self.last = time.monotonic()

    def tick(self, i: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            say(f"  {self.what}: {i} of {self.total} ({now - self.start:.0f} s)")


def _clock(s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0.0, s)))


@dataclass
class Progress:
    """Row i of N, elapsed time and an estimate of what is left: each remaining row's predicted
    time (``estimate_s``: the predictor's step time times the steps, plus what building and
    compiling took in the rows done) or, without a prediction, the mean time of the rows done."""

    total: int | None = None
    start: float = field(default_factory=time.time)
    done: int = 0
    failed: int = 0
    skipped: int = 0
    durations: list = field(default_factory=list)  # (seconds, predicted seconds or None) per row run
    ids: set = field(default_factory=set)  # rows this sweep started (its closing table)

    @property
    def index(self) -> int:
        return self.done + self.failed + self.skipped + 1

    def overhead_s(self) -> float:
        """What the rows done took beyond their prediction (build, compile, warm-up), on average."""
        extra = [d - p for d, p in self.durations if p is not None]
        return sum(extra) / len(extra) if extra else 0.0

    def left_s(self, predicted_left: list[float | None]) -> float | None:
        """Seconds left for the rows not started yet (their predictions, where there are)."""
        mean = sum(d for d, _ in self.durations) / len(self.durations) if self.durations else None
        out = 0.0
        for p in predicted_left:
            if p is not None:
                out += p + self.overhead_s()
            elif mean is not None:
                out += mean
            else:
                return None
        return out

    def line(self, what: str, predicted_left: list[float | None] = ()) -> str:
        """``[row i/N] what (done d, failed f, skipped s, 00:01:02 elapsed, about 00:03:00 left)``."""
        of = f"/{self.total}" if self.total else ""
        left = self.left_s(list(predicted_left)) if predicted_left else None
        eta = f", about {_clock(left)} left" if left is not None else ""
        return (f"[row {self.index}{of}] {what}  (done {self.done}, failed {self.failed}, skipped {self.skipped}, "
                f"{_clock(time.time() - self.start)} elapsed{eta})")


PROGRESS = Progress()


def predicted_row_s(cfg) -> float | None:
    """The predictor's seconds for a row's measured and warm-up steps, times its repeats (None where
    it cannot say: no GPU profile, no fit for its attention kernel)."""
    try:
        from core.predict import predicted_step_s

        return predicted_step_s(cfg) * (cfg.steps + 1) * int(cfg.get("repeats", 1) or 1)
    except Exception:  # an estimate only: no prediction is no estimate
        return None


# ---------------------------------------------------------------------------------- one row
def _stop(proc) -> None:
    """End a child and everything it started (its process group: a launcher's workers too): SIGTERM,
    which launchers pass on to their workers, then SIGKILL after 10 s."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10.0)
    except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
        pass
    try:  # the group's others may outlive the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def stream_child(cmd: list[str], env: dict, timeout_s: float, out=None, prefix: str = "    ",
                 cwd: str | None = None) -> tuple[int, list[str]]:
    """Run ``cmd`` (in ``cwd``, default the current folder) in a process group of its own, echoing
    its output (stdout and stderr, line by line, with ``prefix``) to ``out`` (default: stderr) as it
    comes; return its exit status and its last 50 lines. Past ``timeout_s`` the child and whatever
    it started are stopped: status -1 and a TimeoutError line."""
    out = out or sys.stderr
    tail: list[str] = []
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True)
    LIVE_GROUPS.add(proc.pid)
    deadline = time.time() + float(timeout_s)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd, pending = proc.stdout.fileno(), b""

    def emit(raw: bytes) -> None:
        nonlocal tail
        line = raw.decode("utf-8", "replace")
        out.write(prefix + line + ("" if line.endswith("\n") else "\n"))
        out.flush()
        tail = (tail + [line.rstrip()])[-50:]

    try:
        while True:
            if time.time() > deadline:
                _stop(proc)
                if pending:
                    emit(pending)
                return -1, tail + [f"TimeoutError: the row exceeded {timeout_s:g} s"]
            if sel.select(timeout=1.0):
                # what the pipe holds, never more: a child that wrote half a line and stalls (a progress
                # bar, a hung download) must not block this loop past the deadline
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    emit(raw + b"\n")
        if pending:
            emit(pending)
        return proc.wait(), tail
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C): the child and what it started go too
            _stop(proc)
        LIVE_GROUPS.discard(proc.pid)


def child_error(rc: int, tail: list[str]) -> str:
    """The one line a failed row keeps for a child that wrote no row of its own: a refusal's line
    (status 2: the bench refused the row before measuring, saying what to type instead), else the
    last line that names an error, else the exit status."""
    said = [ln for ln in tail if ln.startswith("stepbench: ")]
    if rc == 2 and said:
        err = said[-1]
    else:
        err = next((ln for ln in reversed(tail) if "Error" in ln or "error" in ln), None)
    err = err or (f"child exited with status {rc}" + (f" (signal {-rc})" if rc < 0 else ""))
    return err.strip().removeprefix("stepbench: ")


def child_env() -> dict:
    """The environment of a row's child: this one, with the checkout importable from any folder."""
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), path])))


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:  # "pid (comm) state ppid ...": comm may hold spaces
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def started_by(pid: int, depth: int = 8) -> bool:
    """Whether process ``pid`` started this one: its parent, or the parent of the session this
    process runs in (a sweep starts each row's child in a session of its own, and torchrun's ranks
    and a peer's processes stay in it), or an ancestor up to ``depth`` levels. True where /proc
    cannot tell (not Linux)."""
    if not os.path.isdir("/proc/self"):
        return True
    p = os.getppid()
    if p == pid or _parent_of(os.getsid(0)) == pid:
        return True
    if pid <= 1:  # init is every process's ancestor: only as the parent or the session's starter
        return False
    for _ in range(depth):
        if p is None or p <= 1:
            return False
        p = _parent_of(p)
        if p == pid:
            return True
    return False


def append_or_stop(results: str, row: dict) -> None:
    """Append a failed row the sweep itself writes; where the results file cannot take it (a full
    disk), the row is kept apart (:func:`core.results.rescue_row`) and the sweep stops with one line
    (a :class:`core.errors.UserError`: status 2), since the rows after it could not be written either."""
    from core.results import append_row, rescue_row

    try:
        append_row(results, row)
    except OSError as e:
        try:
            where = f"the row is in {rescue_row(row, e)}"
        except OSError:
            where = "the row could not be kept anywhere"
        raise UserError(f"results={results} did not take a row ({first_line(e)}): {where}; the sweep stopped: free "
                        "space (or pick another results=) and run the same command to resume") from None


def run_child(overrides: list[str], results: str, timeout_s: float, base: dict, labels: dict | None = None,
              nproc: int = 1, out=None, prefix: str = "    ") -> tuple[int, bool]:
    """Run one row as ``python -m core.bench OVERRIDES results=RESULTS`` in a fresh process (under
    torchrun with ``nproc`` ranks where more than one) with the row id of ``base``; where it wrote
    no row (a crash, a timeout, a refusal), append a failed row with ``labels`` and the child's one
    line. Returns (exit status, whether the child wrote its row)."""
    from core.results import append_row, load_rows

    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    cmd = [sys.executable, *launch, "-m", "core.bench", *overrides, f"results={results}"]
    rc, tail = stream_child(cmd, {**child_env(), CHILD_ENV: base["id"], CHILD_OF_ENV: str(os.getpid())}, timeout_s, out, prefix)
    if rc == -1:  # the sweep's limit, said with what to change
        tail = tail[:-1] + [f"TimeoutError: the row exceeded row_timeout_s={timeout_s:g} s and was stopped: raise "
                            "row_timeout_s"]
    written = any(x.get("id") == base["id"] for x in load_rows(results))
    if not written:
        error = child_error(rc, tail)
        append_or_stop(results, {**base, **(labels or {"model": " ".join(overrides)}), "status": "failed",
                                 "error": error})
        say(f"  failed: {error}")
    return rc, written


# ---------------------------------------------------------------------------------- sweeps
def sweep_file_rows(node, name: str) -> list[list[str]]:
    """The rows of a ``+sweep=`` file, each split into its overrides, before any row runs: the file
    holds ``name`` (optional, a string) and ``rows``, a non-empty list of override lines. Anything
    else is refused with one line (:class:`core.resolve.UserError`), so a malformed file appends
    nothing; a row that is well-formed text but a bad configuration stays a failed row."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from core.resolve import UserError

    where = f"+sweep={name} (conf/sweep/{name}.yaml)"
    eg = "rows: ['model=qwen3_0_6b +attn=fa3 +ac=recompute']"
    if not isinstance(node, DictConfig):
        raise UserError(f"{where} is not a mapping of name and rows: write it as name: {name} and {eg}")
    extra = sorted(set(node.keys()) - {"name", "rows"})
    if extra:
        raise UserError(f"{where} has {extra[0]!r}, which a sweep file does not take (only name and rows): put "
                        f"{extra[0]}=... into its rows, or after +sweep={name} on the command line")
    rows = node.get("rows")
    if not isinstance(rows, ListConfig):
        raise UserError(f"{where} has no list of rows (rows: {OmegaConf.to_container(node).get('rows')!r}): write "
                        f"{eg}")
    if not len(rows):
        raise UserError(f"{where} lists no rows, so the sweep would measure nothing: add one, e.g. {eg}")
    if node.get("name") is not None and not isinstance(node.get("name"), (str, int)):
        raise UserError(f"{where}: name is {OmegaConf.to_container(node)['name']!r}, not a name: write name: {name}")
    if node.get("name") is not None and str(node.get("name")) != name.rsplit("/", 1)[-1]:  # the sweep says one name, the file another
        raise UserError(f"{where} is named {node.get('name')!r} inside: write name: {name} (or leave name out), so the "
                        "sweep's lines and table say the file you ran")
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for i, spec in enumerate(OmegaConf.to_container(rows, resolve=False), 1):  # ${...} left as typed
        if not isinstance(spec, str) or not spec.strip():
            raise UserError(f"{where}: row {i} is {spec!r}, not a line of overrides: write it as "
                            "'model=qwen3_0_6b +attn=fa3' (quote a line that holds ':' or '#')")
        try:
            row = shlex.split(spec)
        except ValueError as e:
            raise UserError(f"{where}: row {i} ({spec!r}) cannot be split into overrides ({e}): close its "
                            "quotation or drop the stray quote") from None
        for o in row:
            if o.startswith("-"):
                raise UserError(f"{where}: row {i} holds the flag {o}, and a sweep file's rows are overrides only: "
                                "drop it (+sweep= is a sweep already)")
            try:
                parsed = parser.parse_override(o)
            except Exception:
                raise UserError(f"{where}: row {i}: cannot parse {o!r}: type key=value, and quote a value with "
                                "other characters, e.g. \"tag='a#b'\"") from None
            if parsed.is_sweep_override():
                raise UserError(f"{where}: row {i} ({o}) lists several values, and a sweep file's row is one "
                                "row: write each value as a row of its own")
            if "${" in o.split("=", 1)[-1]:
                raise UserError(f"{where}: row {i} ({o}): interpolations (${{...}}) are not taken in a row: type "
                                "the value")
            key = override_key(o)
            if key == "sweep" or key.startswith("sweep."):
                raise UserError(f"{where}: row {i} ({o}) would start a sweep inside the sweep: list that sweep's rows "
                                "in this file instead")
            if key == "hydra" or key.startswith(("hydra.", "hydra/")):
                raise UserError(f"{where}: row {i} ({o}): Hydra's own settings are stepbench's (outputs under "
                                f"runs/hydra): leave {key} out")
            if key in SWEEP_KEYS:
                raise UserError(f"{where}: row {i} sets {key}, which belongs to the whole sweep, not to a row: put "
                                f"{key}=... after +sweep={name} on the command line")
        out.append(row)
    return out


#: options that apply to a whole sweep (where its rows go, whether done rows are redone, how often and how
#: long each runs), refused inside a sweep file's row
SWEEP_KEYS = ("results", "redo", "repeats", "row_timeout_s")


def no_defaults_list(name: str) -> None:
    """A sweep file that Hydra would expand or merge before stepbench sees it is refused with one
    line: YAML anchors and aliases (a few lines of aliases are billions of rows: checked on the
    file's tokens, before anything is built), and a Hydra ``defaults:`` list. A sweep file is its
    name and its own rows. Called before Hydra composes the file."""
    import yaml

    from core.options import conf_dir
    from core.paths import plugin_conf_dirs
    from core.resolve import UserError

    for folder in (conf_dir(), *plugin_conf_dirs()):
        path = folder / "sweep" / f"{name}.yaml"
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if any(isinstance(t, (yaml.AliasToken, yaml.AnchorToken)) for t in yaml.scan(text)):
                raise UserError(f"+sweep={name} ({path.name}) uses YAML anchors or aliases (&name, *name), which a "
                                "sweep file does not take: write each row out")
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:  # also a !!python tag (Hydra's loader refuses it as well)
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            what = " ".join(str(getattr(e, "problem", None) or e).split())
            raise UserError(f"+sweep={name} ({path}) is not a sweep file's YAML{at} ({what}): fix it, e.g. "
                            "name: mine and rows: ['model=qwen3_0_6b +attn=fa3']") from None
        except ValueError:  # not UTF-8 text
            raise UserError(f"+sweep={name} ({path}) is not UTF-8 text: a sweep file is YAML (name: and rows:)") from None
        except OSError:
            return  # unreadable: Hydra itself says so
        if isinstance(raw, dict) and "defaults" in raw:
            raise UserError(f"+sweep={name} ({path.name}) has a defaults list, which a sweep file does not take (only "
                            "name and rows): list the rows in this file")
        return


def run_sweep_config(cfg, base_overrides: list[str]) -> None:
    """``+sweep=<name>``: run the rows listed in ``conf/sweep/<name>.yaml`` as a sweep."""
    from hydra import compose

    from core.results import append_row

    name = next((o.split("=", 1)[1] for o in base_overrides if override_key(o) == "sweep"), "?")
    rows = sweep_file_rows(cfg.sweep, name)  # the file's own form was checked before Hydra read it (no_defaults_list)
    extra = [o for o in base_overrides if override_key(o) != "sweep"]
    specs = [merge_overrides(spec, extra) for spec in rows]
    PROGRESS.total = len(rows)
    composed = []
    ticker = Ticker(len(specs), "rows composed")
    for i, overrides in enumerate(specs, 1):
        try:
            composed.append(compose("bench", overrides=overrides))
        except Exception as e:  # a bad row in the sweep file is a failed row
            composed.append(e)
        ticker.tick(i)
    blame_extra(extra, rows, specs, composed)
    say(f"sweep '{cfg.sweep.get('name') or '?'}': {len(rows)} rows x {cfg.repeats} -> {cfg.results}")
    ticker = Ticker(len(composed), "rows' times predicted")
    left = []
    for i, c in enumerate(composed, 1):
        left.append(predicted_row_s(c) if not isinstance(c, Exception) else 0.0)
        ticker.tick(i)
    for i, (overrides, row_cfg) in enumerate(zip(specs, composed)):
        if isinstance(row_cfg, Exception):
            PROGRESS.failed += 1
            e = row_cfg
            msg = f"refused: bad overrides ({first_line(e, with_type=False) or type(e).__name__})"
            say(f"[row] {' '.join(overrides)}: {msg}")
            append_or_stop(cfg.results, failed_row(base_row(None, overrides), None, msg))
            continue
        sweep_row(row_cfg, overrides, left[i + 1:])
    finish_sweep(cfg.results)


def blame_extra(extra: list[str], rows: list[list[str]], specs: list[list[str]], composed: list) -> None:
    """The options typed after ``+sweep=NAME`` apply to every row: where they make a row of the file
    refused for its input that resolves without them (``+peer=prime_rl`` with no ``peer.path``), the
    sweep stops now with that row's one line (:class:`UserError`, status 2), not one failed row per
    row: the options were typed for this file, and one of its rows cannot take them. A row the file
    itself gets wrong stays a failed row. The first :data:`core.bench.MAX_CHECKED_ROWS` rows are
    checked (each is resolved, which allocates nothing)."""
    from hydra import compose

    from core.sweepcheck import refusal

    row_extra = [o for o in extra if override_key(o) not in SWEEP_KEYS]
    if not row_extra:
        return
    from core.bench import MAX_CHECKED_ROWS

    ticker = Ticker(min(len(specs), MAX_CHECKED_ROWS), "rows checked with the options after +sweep=")
    for i, (row, spec, cfg) in enumerate(zip(rows[:MAX_CHECKED_ROWS], specs, composed), 1):
        line = None if isinstance(cfg, Exception) else refusal(cfg, spec)
        if line:
            try:
                own = refusal(compose("bench", overrides=row), row)
            except Exception:  # noqa: BLE001 - the row does not compose alone: the file's own fault
                own = "?"
            if own is None:
                raise UserError(f"{' '.join(row_extra)} (after +sweep=): row {i} ({' '.join(row)}): {line}")
        ticker.tick(i)


def finish_sweep(results: str) -> None:
    """The sweep's closing line and the table of the rows it ran."""
    from core.results import load_rows

    p = PROGRESS
    say(f"sweep done: {p.done} done, {p.failed} failed, {p.skipped} skipped in {_clock(time.time() - p.start)}")
    mine = [r for r in load_rows(results) if r.get("id") in p.ids]
    if mine:
        print("\n" + table(mine), flush=True)


def table(rows: list[dict]) -> str:
    """A short fixed-width table of rows (printed last by a sweep)."""
    head = (f"{'model':<15} {'type':<14} {'seq':>6} {'AC':<20} {'attn':<5} {'sync':<18} {'MFU':>6} {'TPS':>8} "
            f"{'cv':>5} {'step/mb':>8} {'peak':>6} {'host':>5} {'sync s':>7} {'roofl':>5} {'attain':>6}")
    out = [head]
    for r in rows:
        if r.get("status") != "ok":
            cell = lambda k, d="-": str(r.get(k) if r.get(k) is not None else d)  # noqa: E731 (refused: few labels)
            out.append(f"{cell('model', '?'):<15} {cell('type'):<14} {cell('seq_len', ''):>6} "
                       f"{cell('ac'):<20} {cell('attn'):<5} FAILED: {cell('error')[:100]}")
            continue
        sp = r.get("spread") or {}
        host = (r.get("ac_info") or {}).get("host_offload_gib") or 0.0
        out.append(f"{r['model']:<15} {r['type']:<14} {r['seq_len']:>6} {r['ac']:<20} {r['attn']:<5} "
                   f"{str(r.get('sync')):<18} {r['mfu']:5.1f}% {r['tps'] / 1e3:7.2f}k {100 * sp.get('cv', 0):4.1f}% "
                   f"{r['step_time']:7.3f}s {r['peak_mem_gib'] or 0:6.1f} {host:5.1f} "
                   f"{r.get('sync_s_per_step', 0):7.3f} {100 * r.get('roofline_frac', float('nan')):4.0f}% "
                   f"{100 * (r.get('step_budget') or {}).get('attainable', float('nan')):5.0f}%"
                   + (f"  {r['variant']}" if r.get("variant") else ""))
    return "\n".join(out)


@contextlib.contextmanager
def results_lock(results: str):
    """Hold ``<results>.lock`` (beside the file the path resolves to) and the results file itself
    exclusively: two sweeps writing one results file take turns at a row (check what is done,
    measure, write), so neither measures a key the other has done, whether they name it by one
    path, through a symbolic link or by another hard link."""
    real = Path(os.path.realpath(os.path.expanduser(results)))
    path = real.with_name(real.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f, open(real, "a") as rows:  # the rows file's lock follows its inode
        for handle in (f, rows):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"  waiting for another sweep writing to {results}")
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(rows, fcntl.LOCK_UN)
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep_row(cfg, overrides: list[str], predicted_left: list[float | None] = ()) -> int:
    """One row of a sweep (``repeats`` times), each run in a fresh child process."""
    from core.resolve import UserError, resolve, row_labels
    from core.results import append_row, done_keys, read_rows, row_key

    p = PROGRESS
    if not p.durations and not (p.done or p.failed or p.skipped):
        p.start = time.time()
        for problem in read_rows(cfg.results)[1]:  # said once per sweep; such lines are skipped
            say(f"results: skipped unreadable line {problem}")
    say(p.line(" ".join(overrides), predicted_left))
    try:
        r = resolve(cfg)
        if r.peer is not None:  # what the peer refuses is refused before the row counts as done
            from core import peers

            peers.check(cfg, r)
    except Exception as e:  # noqa: BLE001 - a refused row, or a plugin that breaks while resolving, fails its row only
        p.failed += 1
        why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        append_or_stop(cfg.results, failed_row(base_row(cfg, overrides), cfg, f"refused: {why}"))
        say(f"  refused: {why}")
        return 0
    labels = row_labels(cfg, r, 1)
    with results_lock(cfg.results):
        have = 0 if cfg.redo else done_keys(cfg.results).get(row_key(labels), 0)
        todo = max(0, int(cfg.repeats) - have)
        if not todo:
            p.skipped += 1
            say(f"  skipped: already in results {have}x (redo=true runs it again)")
            return 0
        predicted = predicted_row_s(cfg)
        for i in range(todo):
            if todo > 1:
                say(f"  repeat {have + i + 1}/{cfg.repeats}")
            base = base_row(cfg, overrides)
            p.ids.add(base["id"])
            t = time.time()
            rc, written = run_child([o for o in overrides if override_key(o) not in ("results", "redo", "repeats",
                                                                                    "row_timeout_s")], cfg.results,
                                    float(cfg.row_timeout_s), base, labels)
            p.durations.append((time.time() - t, predicted))
            if rc == 0 and written:
                p.done += 1
            else:
                p.failed += 1
    return 0
