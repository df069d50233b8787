"""``filesystem``: each step writes the weights inference needs as safetensors (prime-rl's default).

Full fine-tuning writes every weight in bf16; LoRA writes only the adapter. The file is the
safetensors format written straight from the pinned host buffer the weights are staged in (a
header, then that buffer, each bucket written as soon as its copy from the GPU lands): no
serialized copy of the weights on the host, and the disk write overlaps the copy. Each step goes to
``<dir>/step_<n>/model.safetensors`` (written under a temporary name, then renamed) and is marked
complete by ``<dir>/step_<n>/COMPLETE``, created last by an atomic rename: a crash mid-write never
leaves a step marked complete. Only the newest ``keep`` complete steps are kept. ``dir`` may be
on disk or in ``/dev/shm``. ``overlap=true`` copies on a side stream and writes on a host thread
while the next step computes; the row records how much of the hand-off stayed exposed.

``writer=mapped`` (the default) takes the page cache's page allocation off the step: while the GPU
computes step n+1, a host thread creates step n+1's (temporary) file at its final size, fills it
with zeros, maps it and stores once into each page through the map, so the kernel has allocated
its pages and taken its write faults before the hand-off needs them; the
hand-off then copies the staged buffer into those pages (a parallel memory copy) and renames the
file into place. Every step is still a new file, complete before its marker, never rewritten
after: what a reader sees is the same as with ``write``. A hand-off that starts before its file is
ready waits for it, inside the timed hand-off.

``reuse=true`` (the default, mapped writer) makes the next step's file out of a dropped step's
(older than the newest ``keep``) instead of a new one: its ``COMPLETE`` marker is removed first,
then, only where no process holds the file open or mapped (Linux grants a write lease only then;
where leases are unsupported nothing is reused), it is renamed to the new step's temporary name and
mapped again. Its pages stay in the page cache, so each step neither frees nor allocates and zeros a
file of the weights' size (at 8 GB a step that preparation outlasted the step and grew from 2 s to
7 s on the lent H100's disk: NOTES, session 21). A reader that checks the marker, opens the file and
checks the marker again never reads a reused file.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import re
import shutil
import struct
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from core import hookimpl
from core.contracts import WeightSync
from core.sync import GATHER_MIB, HostStager, Timed, device_drain

MARKER = "COMPLETE"
#: the mapped writer keeps the files of the next AHEAD steps prepared: those of the first AHEAD
#: steps at setup (the warm-up step's and the first measured step's), then after step n's hand-off
#: step n + AHEAD's while step n + 1 computes, so a slow preparation has two steps' time to finish
AHEAD = 2
WEIGHTS = "model.safetensors"


SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def safetensors_header(stager: HostStager, metadata: dict, size: int | None = None) -> bytes:
    """The safetensors header for the stager's flat buffer: each tensor at its byte range, back to
    back in staging order (the file's data section is the flat buffer itself). ``size``: pad the
    header (its JSON with spaces, which JSON allows) to exactly that many bytes."""
    head: dict = {"__metadata__": metadata}
    for (n, p), off in zip(stager.params, stager.offsets):
        a = off * stager.itemsize
        head[n] = {"dtype": SAFETENSORS_DTYPES[stager.dtype], "shape": list(p.shape),
                   "data_offsets": [a, a + p.numel() * stager.itemsize]}
    raw = json.dumps(head, separators=(",", ":")).encode()
    pad = -len(raw) % 8 if size is None else size - 8 - len(raw)  # data starts 8-byte aligned
    if pad < 0:
        raise ValueError(f"safetensors header of {len(raw) + 8} bytes does not fit in {size}")
    raw += b" " * pad
    return struct.pack("<Q", len(raw)) + raw


def step_metadata(step: int) -> dict:
    return {"step": str(step), "format": "pt"}


def mapped_header_size(stager: HostStager) -> int:
    """One header size for every step of a row (the step number's digits vary): the header of a
    20-digit step, 8-byte aligned; each step's header is padded to it, so a file can be sized
    before its step is known."""
    return len(safetensors_header(stager, step_metadata(10**19)))


def prepare_file(path: Path, size: int, touch: bool = True) -> mmap.mmap:
    """``path`` created at ``size`` bytes, its pages allocated in the page cache (zeros written),
    mapped shared into this process with its page tables filled (``MAP_POPULATE``) and every page
    written once through the map: writing into the map afterwards costs a memory copy, no page
    allocation and no page fault. (``MAP_POPULATE`` maps a shared file's pages read-only, so the
    first store to each page would fault for the kernel's dirty tracking; a 0.6 GB copy into an
    untouched map took ~16k faults and 130-139 ms on the CI machine, into a touched one none and
    77-81 ms; ``touch=False`` leaves the faults to the copy, for ``sync_bench.py``'s comparison.)"""
    zeros = memoryview(bytes(min(size, 64 << 20) or 1))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < size:
            off += os.pwrite(fd, zeros[:min(len(zeros), size - off)], off)
    finally:
        os.close(fd)
    return map_file(path, size, touch)


def map_file(path: Path, size: int, touch: bool = True) -> mmap.mmap:
    """``path`` (``size`` bytes already) mapped shared, page tables filled, and (``touch``) every
    page stored into once, so later stores through the map take no fault."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    finally:
        os.close(fd)
    if not touch:
        return mm
    pages = torch.frombuffer(mm, dtype=torch.uint8)
    pages[::mmap.PAGESIZE] = 0  # a store per page (the file holds zeros already): the write faults now
    del pages  # a map cannot close while a tensor views it
    return mm


def write_mapped(mm: mmap.mmap, stager: HostStager, metadata: dict, fsync: bool, close: bool = True) -> None:
    """Copy the header and the staged buffer into a prepared file's map, each bucket as soon as
    its copy from the GPU lands (torch's copy: parallel over the host's threads), then (``close``)
    unmap it. The header fills what the map holds before the data (:func:`mapped_header_size`).
    What is stored through the map is in the file's page cache at once: a reader's ``read`` sees
    it whether the map is still open or not."""
    header = safetensors_header(stager, metadata, len(mm) - stager.nbytes)
    dst = torch.frombuffer(mm, dtype=torch.uint8)
    try:
        dst[:len(header)].copy_(torch.frombuffer(bytearray(header), dtype=torch.uint8))
        data = stager.flat.view(torch.uint8) if stager.numel else None
        start, h, isz = 0, len(header), stager.itemsize
        for end in stager.ready_chunks():
            dst[h + start * isz:h + end * isz].copy_(data[start * isz:end * isz])
            start = end
    finally:
        del dst  # the map cannot close while a tensor views it
    if fsync:
        mm.flush()
    if close:
        mm.close()


#: where the mapped writer unmaps a step's file: ``background`` (the default) on the preparation
#: thread, after the step is published (unmapping a written 1.2 GB map took 40-55 ms on the 2-core
#: CI machine, time the hand-off waited for and no reader needs); ``inline`` in the hand-off
UNMAP = ("background", "inline")

#: how the file reaches the page cache: ``mapped``: a file prepared off the step (see the module's
#: docstring), the staged buffer copied into its pages; ``write``: the header, then the pinned
#: buffer itself, one staged bucket at a time as each copy from the GPU lands (no serialized copy
#: of the weights); ``safetensors``: the library's ``save_file`` of the staged tensors once all have
#: landed (the reference). On the lent H100 ``write`` and ``safetensors`` write ~3 GB/s into the
#: page cache, disk or /dev/shm alike: the kernel's allocation of fresh pages bounds them (a thread
#: pool or an mmap copy into a fresh file was no faster, sync_bench.py), which ``mapped`` moves off
#: the step; ``write`` halves the hand-off of a LoRA adapter (20 MB: 12 vs 21 ms)
WRITERS = ("mapped", "write", "safetensors")


def write_file(path: Path, stager: HostStager, metadata: dict, fsync: bool, how: str = "write") -> None:
    """The safetensors file of the staged tensors at ``path`` (``how``: one of :data:`WRITERS`)."""
    if how == "safetensors":
        from safetensors.torch import save_file

        stager.wait_ready()
        save_file(stager.host, str(path), metadata=metadata)
        if fsync:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        return
    data = memoryview(stager.flat.view(torch.uint8).numpy()) if stager.numel else memoryview(b"")
    with open(path, "wb", buffering=0) as f:
        def write_all(v: memoryview) -> None:
            while len(v):
                v = v[f.write(v):]

        write_all(memoryview(safetensors_header(stager, metadata)))
        start = 0
        for end in stager.ready_chunks():  # each bucket as soon as its copy has landed
            write_all(data[start * stager.itemsize:end * stager.itemsize])
            start = end
        if fsync:
            os.fsync(f.fileno())


def temp_path(out: Path, step: int) -> Path:
    """Where step ``step``'s weights are written before the rename that publishes them."""
    return out / f"step_{step}" / (WEIGHTS + ".tmp")


def prepare_step(stager: HostStager, out: Path, step: int, touch: bool = True) -> mmap.mmap:
    """Step ``step``'s temporary file, sized for the stager and prepared (:func:`prepare_file`)."""
    path = temp_path(out, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    return prepare_file(path, mapped_header_size(stager) + stager.nbytes, touch)


def unopened(path: Path) -> bool:
    """Whether no process holds ``path`` open or mapped: Linux grants a write lease (``F_SETLEASE``)
    only then; released at once. False where leases are unsupported or the file cannot be opened."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    except (OSError, AttributeError):
        return False
    finally:
        os.close(fd)


def reuse_dropped(out: Path, keep: int, step: int, size: int, touch: bool = True) -> mmap.mmap | None:
    """Step ``step``'s temporary file made of the oldest complete step past the newest ``keep``, mapped
    (:func:`map_file`), or None where there is none, its size differs, or a process holds it open.
    The dropped step's marker goes first, so a reader that checks the marker after opening (see the
    module's docstring) never keeps a file that is reused."""
    done = complete_steps(out)
    old = done[:-keep] if keep > 0 else []
    if not old:
        return None
    src_dir = out / f"step_{old[0]}"
    src = src_dir / WEIGHTS
    try:
        if src.stat().st_size != size:
            return None
        (src_dir / MARKER).unlink()
    except OSError:
        return None
    if not unopened(src):
        shutil.rmtree(src_dir, ignore_errors=True)  # unlinked: the reader keeps what it opened
        return None
    dst = temp_path(out, step)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    shutil.rmtree(src_dir, ignore_errors=True)
    return map_file(dst, size, touch)


def drop_old(out: Path, keep: int) -> None:
    """Remove the complete steps older than the newest ``keep`` (unlinking a file frees its
    page-cache pages: as costly as writing them, so the mapped writer does it off the step)."""
    done = complete_steps(out)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(out / f"step_{old}", ignore_errors=True)


def write_step(stager: HostStager, out: Path, step: int, keep: int, fsync: bool, how: str = "write",
               prepared: mmap.mmap | None = None, cleanup: bool = True, unmap=None) -> None:
    """Write one step's tensors as ``model.safetensors`` and mark the step complete; with
    ``cleanup``, drop complete steps older than the newest ``keep`` (:func:`drop_old`).
    ``how="mapped"`` writes into ``prepared`` (the step's temporary file, prepared now if not given)
    and unmaps it, or, given ``unmap`` (a callable), hands the map to it once the step is marked."""
    d = out / f"step_{step}"
    d.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out, step)
    mm = None
    if how == "mapped":
        mm = prepared if prepared is not None else prepare_step(stager, out, step)
        write_mapped(mm, stager, step_metadata(step), fsync, close=unmap is None)
    else:
        write_file(tmp, stager, step_metadata(step), fsync, how)
    os.replace(tmp, d / WEIGHTS)
    marker_tmp = d / (MARKER + ".tmp")
    marker_tmp.write_text(f"{step}\n")
    os.replace(marker_tmp, d / MARKER)
    if mm is not None and unmap is not None:
        unmap(mm)
    if cleanup:
        drop_old(out, keep)


def complete_steps(out: str | Path) -> list[int]:
    """Steps under ``out`` that are marked complete (what an inference server may load)."""
    out = Path(out)
    return sorted(int(p.parent.name.split("_", 1)[1]) for p in out.glob(f"step_*/{MARKER}")
                  if re.fullmatch(r"step_\d+", p.parent.name))


def dir_problem(root: str | Path) -> str | None:
    """Why weights cannot be written under ``root`` (None where they can), found by making the
    missing folders and a temporary file there and removing all of it again: what
    ``python -m core.predict`` checks without leaving anything behind."""
    root = Path(root).expanduser()
    made, p = [], root
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as e:
        return f"cannot write weights to sync.dir={root} ({e.strerror}): pick another, e.g. " \
               "sync.dir=/dev/shm/stepbench-weights or +sync=none"
    finally:
        for d in made:  # the deepest first
            try:
                d.rmdir()
            except OSError:
                pass
    return None


class Filesystem(WeightSync):
    name = "filesystem"

    def __init__(self, dir: str = "runs/weights", keep: int = 2, overlap: bool = False, fsync: bool = False,
                 cleanup: bool = True, writer: str = "mapped", touch: bool = True, gather_mib: int = GATHER_MIB,
                 unmap: str = "background", reuse: bool = True):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"sync.keep must be a positive integer (got {keep!r}): try sync.keep=2")
        if dir is None or not str(dir).strip():
            raise ValueError("sync.dir is empty (the weights would land in the current folder): name a folder, e.g. "
                             "sync.dir=runs/weights")
        from core.results import has_control_char

        if has_control_char(str(dir)):
            raise ValueError(f"sync.dir={str(dir)!r} has a control character (a newline, a tab) in its name: name a "
                             "folder without one, e.g. sync.dir=runs/weights")
        if not isinstance(gather_mib, int) or isinstance(gather_mib, bool) or gather_mib < 0:
            raise ValueError(f"sync.gather_mib must be a whole number of MiB, 0 or more (got {gather_mib!r}): "
                             f"try sync.gather_mib={GATHER_MIB}")
        self.gather_mib = gather_mib
        if writer not in WRITERS:
            raise ValueError(f"sync.writer={writer} is not one of {', '.join(WRITERS)}: try sync.writer=mapped")
        self.writer = writer
        if unmap not in UNMAP:
            raise ValueError(f"sync.unmap={unmap} is not one of {', '.join(UNMAP)}: try sync.unmap=background")
        if writer != "mapped" and unmap != "background":
            raise ValueError(f"sync.unmap={unmap} is where the mapped writer unmaps, and sync.writer={writer} maps "
                             "nothing: leave sync.unmap out, or use sync.writer=mapped")
        if writer != "mapped" and touch is not True:
            raise ValueError(f"sync.touch=false leaves the mapped writer's page faults to the copy, and "
                             f"sync.writer={writer} maps nothing: leave sync.touch out, or use sync.writer=mapped")
        if not isinstance(reuse, bool):
            raise ValueError(f"sync.reuse must be true or false (got {reuse!r}): try sync.reuse=true")
        if writer != "mapped" and reuse is not True:
            raise ValueError(f"sync.reuse=false keeps the mapped writer from reusing dropped steps' files, and "
                             f"sync.writer={writer} prepares none: leave sync.reuse out, or use sync.writer=mapped")
        self.unmap, self.reuse = unmap, reuse and writer == "mapped"
        self.reused: list[bool] = []  # per prepared file after setup: made of a dropped step's file
        self.prep_pool = ThreadPoolExecutor(1, thread_name_prefix="stepbench-prepare") if writer == "mapped" else None
        self.prepared: dict[int, Future] = {}  # step -> its prepared file
        self.prepare_wait: list[float] = []  # per step: seconds the hand-off waited for its file
        if "$" in str(dir):
            raise ValueError(f"sync.dir={dir} holds '$', a variable the shell did not expand (it was in single quotes): "
                             "type the folder itself, e.g. sync.dir=runs/weights")
        self.root, self.keep, self.overlap, self.fsync = Path(dir).expanduser(), keep, bool(overlap), bool(fsync)
        self.cleanup, self.touch = bool(cleanup), bool(touch)
        self.out = None
        self.timed = Timed()
        self.stager = None

    @property
    def label(self) -> str:
        """``filesystem disk`` or ``filesystem shm`` (``sync.dir`` under /dev/shm), ``overlap`` added."""
        return f"filesystem {'shm' if str(self.root).startswith('/dev/shm') else 'disk'}" \
            + (" overlap" if self.overlap else "")

    def check(self, ctx) -> str | None:
        """Refuse before the row starts: an unwritable directory, or too little free space."""
        if ctx.rank != 0:
            return None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root):
                pass
        except OSError as e:
            return f"cannot write weights to sync.dir={self.root} ({e.strerror}): pick another, e.g. " \
                   "sync.dir=/dev/shm/stepbench-weights or +sync=none"
        if self.writer == "mapped":
            probe = self.root / f".stepbench-map-probe-{os.getpid()}"
            try:
                prepare_file(probe, 4096).close()
            except (OSError, ValueError) as e:
                return (f"sync.dir={self.root} cannot hold a memory-mapped file ({e}): use sync.writer=write "
                        "or another sync.dir")
            finally:
                probe.unlink(missing_ok=True)
        need = ctx.predicted_bytes * (self.keep + (AHEAD if self.writer == "mapped" else 1))
        free = shutil.disk_usage(self.root).free
        if need > free:
            return (f"sync.dir={self.root} has {free / 2**30:.2f} GiB free but keeping {self.keep} steps of "
                    f"{ctx.predicted_bytes / 2**30:.2f} GiB needs {need / 2**30:.2f} GiB: free space, "
                    "lower sync.keep, or pick another sync.dir")
        return None

    def setup(self, model, ctx) -> None:
        self.rank, self.adapter_only = ctx.rank, ctx.adapter_only
        name = ctx.row_id or "row"
        if Path(name).name != name or name in (".", ".."):
            raise ValueError(f"row id {name!r} is not a folder name (the row's weights go to sync.dir/<row id>)")
        out = self.root / name
        if self.rank == 0 and (out.exists() or out.is_symlink()):  # a folder a run of this row left: step files only
            foreign = [p.name for p in out.iterdir() if not re.fullmatch(r"step_\d+", p.name)] \
                if out.is_dir() and not out.is_symlink() else [out.name]
            if foreign:
                raise ValueError(f"{out} exists and holds what stepbench did not write ({foreign[0]}): move it, or "
                                 "pick another sync.dir")
        self.out = out  # what finish() removes: set only once it is known to be this row's
        if self.rank == 0:
            shutil.rmtree(self.out, ignore_errors=True)
            self.out.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        self.timed.drain = device_drain(device) or self.timed.drain
        self.stager = HostStager(ctx.tensors(model), torch.bfloat16, ctx.rank, device, self.overlap,
                                 gather_mib=self.gather_mib)
        if self.writer == "mapped" and self.rank == 0:
            # the files of the first AHEAD steps, prepared now (setup is not timed): a machine's first
            # GBs of page cache come slowly (the first RL Full row of a call waited 0.2-0.6 s for its
            # file in its first measured steps with one file prepared a step ahead: NOTES, session 11)
            for step in range(AHEAD):
                self.prepared[step] = self.prep_pool.submit(prepare_step, self.stager, self.out, step, self.touch)
            for fut in self.prepared.values():
                fut.result()

    def before_update(self) -> None:
        if self.stager is not None:
            self.stager.protect()

    def _background(self, step: int) -> mmap.mmap:
        mm = None
        if self.reuse:
            mm = reuse_dropped(self.out, self.keep, step, mapped_header_size(self.stager) + self.stager.nbytes,
                               self.touch)
            self.reused.append(mm is not None)
        drop_old(self.out, self.keep)
        return mm if mm is not None else prepare_step(self.stager, self.out, step, self.touch)

    def _take_prepared(self, step: int):
        """Step ``step``'s prepared file (waiting for it, the wait recorded), or None where none or
        another step's was prepared (that one is discarded)."""
        t = time.perf_counter()
        fut = self.prepared.pop(step, None)
        self._discard_prepared(before=step)
        mm = fut.result() if fut is not None else None
        self.prepare_wait.append(time.perf_counter() - t)
        return mm

    def _discard_prepared(self, before: int | None = None) -> None:
        """Unmap and remove files prepared for steps that did not come (all, or those before
        ``before``; a failed preparation too)."""
        for step in [s for s in self.prepared if before is None or s < before]:
            fut = self.prepared.pop(step)
            try:
                fut.result().close()
            except OSError:
                pass
            shutil.rmtree(self.out / f"step_{step}", ignore_errors=True)

    def _write(self, step: int):
        def write():
            if self.rank != 0:
                self.stager.wait_ready()
                return
            mapped = self.writer == "mapped"
            prepared = self._take_prepared(step) if mapped else None
            off_step = mapped and self.unmap == "background"  # the preparation thread unmaps it, in order
            write_step(self.stager, self.out, step, self.keep, self.fsync, self.writer, prepared, cleanup=not mapped,
                       unmap=(lambda mm: self.prep_pool.submit(mm.close)) if off_step else None)
            nxt = step + AHEAD  # off the step, while the GPU computes the next one: a file AHEAD steps on
            if mapped and nxt not in self.prepared:
                self.prepared[nxt] = self.prep_pool.submit(self._background, nxt)
        return write

    def after_step(self, step: int) -> None:
        if self.overlap:
            self.timed.run_overlapped(self.stager.stage, self._write(step))
        else:
            self.timed.run_inline(lambda: (self.stager.stage(), self._write(step)()))

    def finish(self) -> None:
        self.timed.close()
        if self.rank == 0:
            self._discard_prepared()  # the file prepared for a step that never came
        if self.prep_pool is not None:
            self.prep_pool.shutdown(wait=True)
        if self.cleanup and self.out is not None and self.rank == 0:
            shutil.rmtree(self.out, ignore_errors=True)  # a benchmark leaves no weights behind

    def describe(self) -> dict:
        return {"method": "filesystem", "dir": str(self.out), "overlap": self.overlap, "keep": self.keep,
                "writer": self.writer, **({"unmap": self.unmap, "reuse": self.reuse, "reused": self.reused}
                                          if self.writer == "mapped" else {}),
                "adapter_only": self.adapter_only, "bytes_per_step": self.stager.nbytes if self.stager else 0,
                **({"prepare_wait_s": self.prepare_wait} if self.writer == "mapped" else {}),
                **self.timed.describe()}


@hookimpl
def stepbench_register_weight_sync(register):
    register("filesystem", lambda o, ctx: Filesystem(o.get("dir", "runs/weights"), o.get("keep", 2),
                                                     o.get("overlap", False), o.get("fsync", False),
                                                     o.get("cleanup", True), o.get("writer", "mapped"),
                                                     o.get("touch", True), o.get("gather_mib", GATHER_MIB),
                                                     o.get("unmap", "background"), o.get("reuse", True)),
             doc="write bf16 weights (LoRA: the adapter) as safetensors each step; sync.dir, sync.overlap")
