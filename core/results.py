"""Rows: append-only JSON lines, one write per row, and the key that identifies a row.

A results file is only ever appended to. A line torn by a crash elsewhere (no trailing newline)
never swallows the next row: ``append_row`` starts a new line first. Lines that cannot be read
(torn, not JSON, not an object, not UTF-8) are skipped and reported with their file and line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

#: what defines a row: every option that changes what is measured
KEY_FIELDS = ("model", "type", "seq_len", "ac", "attn", "hardware_label", "micro_batches", "packing", "compile",
              "sync", "variant")


class ResultsError(Exception):
    """A results destination that cannot be written (reported as one line, before measuring)."""


def row_variant(row: dict) -> str:
    """The row's variant (options off their defaults; every row since schema 3 stores it:
    benchmarks/migrate_rows.py gave it to older ones)."""
    return row.get("variant") or ""


def row_key(row: dict) -> tuple:
    """What defines a row: model, type, seq_len, AC (with mode), attention, NxGPU, micro-batches,
    packing, compile, weight sync and the variant (:func:`row_variant`)."""
    return tuple(row_variant(row) if k == "variant" else row.get(k) for k in KEY_FIELDS)


def has_control_char(text: str) -> bool:
    """A newline, tab or other control character: typed into a name by mistake."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


#: the longest path a Linux system call takes (PATH_MAX, its terminating NUL included)
PATH_MAX = 4096


def too_long(raw) -> str | None:
    """Where the path ``raw`` is longer than a system call takes: the reason, its start and its
    length in one line (the path itself may be pages long); else None."""
    try:  # as typed (a relative path is resolved by the kernel from the working folder, however deep)
        n = len(os.fsencode(os.path.expanduser(str(raw))))
    except (ValueError, OSError):  # a NUL byte: said by the checks after
        return None
    return f"{str(raw)[:40]}... is {n} bytes long, above the {PATH_MAX - 1} a path may have" if n >= PATH_MAX else None


def _destination(raw: str, what: str, example: str, replaced: bool = True) -> Path:
    """The regular file (existing, or to be created in an existing folder) a path names, following
    symbolic links: refuses what a row or a report cannot be written into whole (a folder, a FIFO, a
    device, a link into a missing folder or a loop, a name longer than the filesystem takes)."""
    sep = "" if what.endswith("=") else " "
    arg, eg = f"{what}{sep}{raw}", f"{what}{sep}{example}"
    if too_long(raw):
        raise ResultsError(f"{what}{sep}{too_long(raw)}: name a shorter path, e.g. {eg}")
    if any(len(part.encode()) > 255 for part in Path(raw).parts):  # before the filesystem is asked
        raise ResultsError(f"{arg}: a name in it is longer than the 255 bytes a filesystem takes: name a "
                           f"shorter file, e.g. {eg}")
    if has_control_char(raw):
        raise ResultsError(f"{arg!r} has a control character (a newline, a tab) in its name: name a file without one, "
                           f"e.g. {eg}")
    if "$" in raw:  # a variable the shell left alone (single quotes): a folder named '$HOME' would be made
        raise ResultsError(f"{arg} holds '$', a variable the shell did not expand (it was in single quotes): type the "
                           f"path itself, e.g. {eg}")
    path = Path(raw).expanduser()
    if raw.endswith(("/", os.sep)) or path.is_dir():  # Path() drops a trailing slash: look at the text
        raise ResultsError(f"{arg} is a directory: name a file, e.g. {what}{sep}{path / Path(example).name}")
    try:
        real = path.resolve(strict=False)
    except (RuntimeError, OSError) as e:  # a symlink loop
        raise ResultsError(f"{arg} cannot be resolved ({type(e).__name__}): name another file, "
                           f"e.g. {eg}") from None
    if path.is_symlink() and not real.parent.is_dir():
        raise ResultsError(f"{arg} is a link into a folder that does not exist ({real.parent}): name "
                           f"another file, e.g. {eg}")
    if real.exists() and not real.is_file():
        raise ResultsError(f"{arg} is not a regular file (a device, a FIFO, ...): name a file, e.g. "
                           f"{eg}")
    if real.parts[:2] in (("/", "proc"), ("/", "sys")):  # the kernel's files: they look regular and hold no rows
        raise ResultsError(f"{arg} is one of the kernel's files ({'/'.join(real.parts[:2])[1:]}), not a file that "
                           f"keeps what is written: name a file, e.g. {eg}")
    anc = next((p for p in (real, *real.parents) if p.exists()), None)
    if anc is None or (anc != real and not anc.is_dir()):
        raise ResultsError(f"{arg}: {anc} is a file, not a folder: name a file in a folder, e.g. "
                           f"{eg}")
    try:
        limit = os.pathconf(anc if anc.is_dir() else anc.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if any(len(part.encode()) > limit for part in real.parts):
        raise ResultsError(f"{arg}: a name in it is longer than the {limit} bytes the filesystem takes: "
                           f"name a shorter file, e.g. {eg}")
    if not os.access(anc, os.W_OK) or (anc != real and not os.access(anc, os.X_OK)):
        raise ResultsError(f"cannot write {arg} (permission denied): pick another file, e.g. {eg}")
    folder = anc if anc != real else real.parent
    # a folder that says it is writable and takes no file (/proc, a read-only mount); for an existing
    # file too where it is replaced through a temporary file beside it (``replaced``: outputs)
    if replaced or not real.exists():
        import tempfile

        try:
            with tempfile.TemporaryFile(dir=folder, prefix=".stepbench-probe-"):
                pass
        except OSError as e:
            raise ResultsError(f"cannot write {arg}: {folder} takes no new file ({e.strerror or e}): pick a file "
                               f"in another folder, e.g. {eg}") from None
    return real


def first_line(path: Path) -> str | None:
    """The first non-empty line of an existing file (a BOM dropped; past any run of blank lines, up
    to 64 MiB into the file), or None where it has none or cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            while head.strip() == b"" and head and f.tell() < (1 << 26):  # blank so far: read on
                more = f.read(1 << 16)
                if not more:
                    break
                head = more
            if head.strip():  # the line that starts in this chunk, whole (up to 64 KiB more)
                start = len(head) - len(head.lstrip())
                rest = head[start:]
                if b"\n" not in rest:
                    rest += f.read(1 << 16)
                head = rest
    except OSError:
        return None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), None)


def last_line(path: Path) -> str | None:
    """The last non-empty line of an existing file (read from its last 64 KiB; a longer last line
    is its tail), or None where it has none or cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 16)))
            tail = f.read()
    except OSError:
        return None
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    if not lines:
        return None
    whole = size <= (1 << 16) or len(lines) > 1  # the read began inside the line otherwise
    return lines[-1].decode("utf-8", "replace").lstrip("\ufeff").strip() if whole else None


def is_row_line(line: str) -> bool:
    """A line of a rows file: a JSON object with a row's fields (a measured or failed row has
    ``status`` and ``model``, a predicted one ``kind``)."""
    keys = ("status", "model", "kind")
    try:
        obj = json.loads(line)
    except ValueError:  # a row torn by a crash mid-write (append_row closes it before the next row)
        return line.startswith("{") and any(f'"{k}"' in line for k in keys)
    return isinstance(obj, dict) and any(k in obj for k in keys)


#: what an output file may already hold to be written over or appended to: (test of its first
#: line, what it is called in a refusal)
ROWS = (is_row_line, "rows (JSON lines)")


def _object(line: str):
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def is_baseline_line(line: str) -> bool:
    """A line of a baseline as ``core.report --save-baseline`` writes it: a row's key and figures,
    with neither a measured row's ``status`` nor a predicted row's ``kind``."""
    obj = _object(line)
    return obj is not None and "model" in obj and "status" not in obj and "kind" not in obj


def is_prediction_line(line: str) -> bool:
    """A line of predicted rows as ``core.predict`` writes them (``kind: prediction``)."""
    obj = _object(line)
    return obj is not None and obj.get("kind") == "prediction"


#: a baseline file (written over only by another baseline) and a file of predicted rows (only by
#: predictions): a file of measured rows is never either, so neither write can replace measurements
BASELINE = (is_baseline_line, "a baseline (as --save-baseline writes it)")
PREDICTIONS = (is_prediction_line, "predicted rows (as python -m core.predict writes them)")


def _holds(path: Path, holds, arg: str, eg: str, verb: str = "written over") -> None:
    if holds is None or not path.is_file():
        return
    line = first_line(path)
    if line is not None and not holds[0](line):
        raise ResultsError(f"{arg} exists and holds something other than {holds[1]} (its first line: {line[:40]!r}): "
                           f"it would be {verb}; name another file, e.g. {eg}")


def check_writable(path: str | Path, sweep: bool = False) -> Path:
    """Make sure rows can be appended to ``path`` (called before a row is measured); returns the
    regular file it names (symbolic links followed). A file that holds something other than rows
    is refused: a row appended to it would damage it. ``sweep``: its lock beside it
    (``<results>.lock``) must be possible too."""
    raw = str(path)
    if not raw.strip():
        raise ResultsError("results is empty: name a file, e.g. results=runs/rows.jsonl")
    if raw.strip() == "-":
        raise ResultsError("results=- would make a file named '-' (rows are not written to standard output): name "
                           "a file, e.g. results=runs/rows.jsonl")
    real = _destination(raw, "results=", "runs/rows.jsonl", replaced=sweep)
    _holds(real, ROWS, f"results={raw}", "results=runs/rows.jsonl", "appended to")
    last = last_line(real) if real.is_file() else None
    # rows first, then other text: the row would follow it (a row torn by a crash starts with "{")
    if last is not None and not last.startswith("{"):
        raise ResultsError(f"results={raw} ends with a line that is not a row ({last[:40]!r}): a row appended there "
                           "would follow text of another kind; name another file, e.g. results=runs/rows.jsonl")
    line = first_line(real) if real.is_file() else None
    if line is not None and (is_prediction_line(line) or is_baseline_line(line)):
        what = "predicted rows (python -m core.predict)" if is_prediction_line(line) else "a baseline (--save-baseline)"
        raise ResultsError(f"results={raw} holds {what}, not measured rows: a measured row appended there would be "
                           "taken for one of them; name another file, e.g. results=runs/rows.jsonl")
    lock = real.with_name(real.name + ".lock")  # what a sweep holds while it writes a row (core.sweep)
    if len(os.fsencode(lock.name)) > 255:
        raise ResultsError(f"results={raw}: its name is too long for the lock a sweep keeps beside it ({real.name}.lock "
                           "passes 255 bytes): name a shorter file, e.g. results=runs/rows.jsonl")
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        raise ResultsError(f"results={raw}: {lock} (the lock a sweep holds beside it) is not a file: move it, or "
                           "name another results file")
    return real


def rescue_row(row: dict, error: BaseException) -> Path:
    """Where a measured row goes when its results file failed to take it (a full disk, a file
    removed mid-row): a file of its own in the current folder (else the temporary folder); returns it."""
    import tempfile

    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        out = folder / f"stepbench-row-{row.get('id', 'unknown')}.jsonl"
        try:
            append_row(out, row)
            return out
        except OSError:
            continue
    raise error


def write_atomic(path: str | Path, text) -> Path:
    """Write ``text`` (a str, or a callable that writes into the binary file it is given) to
    ``path`` whole or not at all: into a unique temporary file beside it (never a name another
    writer or an input could have), then renamed over ``path`` in one step. The new file keeps the
    mode of the one it replaces. Returns ``path``."""
    return write_all_atomic([(path, text)])[0]


def write_all_atomic(outputs: list) -> list[Path]:
    """:func:`write_atomic` for several files that belong together: every one is written to its
    temporary file first, and only when all were (a full disk fails one of them) are they renamed
    into place; else none is, and the temporary files are removed."""
    import tempfile

    staged = []
    try:
        for path, text in outputs:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                mode = path.stat().st_mode & 0o777
            except FileNotFoundError:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                             delete=False) as f:
                staged.append((Path(f.name), path))
                text(f) if callable(text) else f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(f.name, mode)
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)  # ours: made above (a renamed one is gone from its temporary name)
        raise
    return [path for _, path in staged]


def _resolved(path: Path) -> Path | None:
    """``path`` with its links followed (None for a link loop)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return None


def check_output(value, flag: str, example: str, inputs=(), what: str = "an input", holds=None) -> Path:
    """An output file named by ``flag``: not empty, not a folder, not any of ``inputs`` (files, or
    folders whose ``*.jsonl`` files are inputs), and in a place where it can be created. ``holds``:
    ``(test, name)``, what an existing file there must hold (its first line passes ``test``) to be
    written over. Raises :class:`ResultsError` with one line saying what to type instead."""
    raw = "" if value is None else str(value)
    if not raw.strip():
        raise ResultsError(f"{flag} is empty: name a file, e.g. {flag} {example}")
    if raw.strip() == "-":
        raise ResultsError(f"{flag} - would make a file named '-' (nothing is written to standard output): name a "
                           f"file, e.g. {flag} {example}")
    path = _destination(raw, flag, example)
    mine = path
    for i in inputs:
        i = Path(i).expanduser()
        files = sorted(i.glob("*.jsonl")) if i.is_dir() else [i]
        if any(_resolved(f) == mine for f in files):
            raise ResultsError(f"{flag} {raw} is {what}: it would be written over; name another file, e.g. "
                               f"{flag} {example}")
    if any(i.is_dir() and path.parent == i.resolve() and path.suffix == ".jsonl" for i in map(Path, inputs)):
        raise ResultsError(f"{flag} {raw} is a .jsonl file in a folder of inputs: the next read would take it "
                           f"for rows; name another file, e.g. {flag} {example}")
    _holds(path, holds, f"{flag} {raw}", f"{flag} {example}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ResultsError(f"{flag} {raw}: permission denied: name a file you can write, e.g. {flag} {example}")
    try:  # its folder, made now: a place where none can be made is refused before any work
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"{flag} {raw}: its folder cannot be made ({e.strerror or e}): name a file in a folder you can "
                           f"write, e.g. {flag} {example}") from None
    return path


def append_row(path: str | Path, row: dict) -> None:
    """Append one row as a single write, flushed and fsynced (an interrupted sweep loses nothing).
    A torn last line is closed first, so it never merges with this row."""
    path = Path(path).expanduser()  # '~/rows.jsonl' quoted past the shell: the home folder, as it was checked
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            done = 0
            while done < len(line):  # a full disk writes part of the line and then nothing: an error
                n = os.write(fd, line[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, f"wrote {done} of the row's {len(line)} bytes")
                done += n
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # no torn row: the file as it was before
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_rows(*paths: str | Path) -> tuple[list[dict], list[str]]:
    """Rows of the given JSONL files (or folders of them, not recursive) and the problems found:
    one ``file:line: reason`` per line that could not be read."""
    rows, problems, files = [], [], []
    for p in paths:
        p = Path(p).expanduser()
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    seen = set()
    for f in files:
        try:  # a file named as itself and again through its folder (or a link) is read once
            real = f.resolve()
        except (OSError, RuntimeError):
            real = f
        if real in seen:
            continue
        seen.add(real)
        try:
            if not f.is_file():
                continue
            data = f.read_bytes()
        except (OSError, RuntimeError) as e:  # a link loop, a file that cannot be read
            problems.append(f"{f}: cannot be read ({type(e).__name__})")
            continue
        for i, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8").lstrip("\ufeff"))  # a byte-order mark from an editor
            except UnicodeDecodeError:
                problems.append(f"{f}:{i}: not UTF-8")
                continue
            except json.JSONDecodeError as e:
                problems.append(f"{f}:{i}: not JSON ({e.msg}; a torn line?)")
                continue
            except (RecursionError, ValueError) as e:  # nested too deep, an integer too long to read
                problems.append(f"{f}:{i}: not a row ({type(e).__name__})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{f}:{i}: a JSON {type(obj).__name__}, not a row object")
                continue
            rows.append(obj)
    return rows, problems


def load_rows(*paths: str | Path) -> list[dict]:
    """Every readable row in the given JSONL files (or folders of them)."""
    return read_rows(*paths)[0]


def done_keys(path: str | Path) -> dict[tuple, int]:
    """How many successful rows each key already has in a results file."""
    out: dict[tuple, int] = {}
    for r in load_rows(path):
        if r.get("status") == "ok":
            out[row_key(r)] = out.get(row_key(r), 0) + 1
    return out
