"""Weight sync: what the inference side receives equals the trainer's weights, every step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from core.models.flavours import QWEN3, QWEN3_MOE
from core.plugins import registry
from core.contracts import SyncContext
from core.trainer import build, make_batches, train_step
from plugins.sync.filesystem import AHEAD, Filesystem, complete_steps
from tests.test_cli import run

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def built(args, adapter="full", ac="recompute"):
    reg = registry()
    ad = reg.get("adapter", adapter).make({"rank": 4, "alpha": 8} if adapter == "lora" else {})
    return build(args, reg.get("attn", "sdpa").make({}), reg.get("ac", ac).make({}), ad,
                 torch.device("cpu"), seed=1)


def full(p):
    t = p.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@pytest.mark.parametrize("overlap,chunk,writer", [(False, None, "mapped"), (True, None, "mapped"),
                                                  (False, 1000, "mapped"), (True, 1000, "write"),
                                                  (False, None, "safetensors")])
@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_filesystem_files_equal_trainer_weights_every_step(dist_group, tmp_path, overlap, adapter, chunk, writer,
                                                           monkeypatch):
    """safetensors reads back every tensor bit for bit, whichever writer; chunk=1000 stages in
    buckets that split tensors and join several (the tiny model's tensors are 64 to 32k elements)."""
    import core.sync

    if chunk:
        monkeypatch.setattr(core.sync, "STAGE_CHUNK", chunk)
    args = QWEN3["tiny"]
    b = built(args, adapter)
    fs = Filesystem(str(tmp_path), keep=3, overlap=overlap, cleanup=False, writer=writer)
    fs.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=adapter == "lora", row_id="r", handoff=b.adapter.handoff))
    b.sync = fs
    if writer == "mapped":  # the first AHEAD steps' files are ready before the first step (setup is untimed)
        assert sorted(fs.prepared) == list(range(AHEAD)) and all(f.done() for f in fs.prepared.values())
    for step in range(3):
        train_step(b, make_batches(args, "rl", 128, 1, "random", 0, step, "cpu"), "rl", step=step)
        fs.timed.wait_pending()  # the overlapped write of this step is done
        path = tmp_path / "r" / f"step_{step}" / "model.safetensors"
        got = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == {"step": str(step), "format": "pt"}
        want = {n: full(p).to(torch.bfloat16) for n, p in b.model.named_parameters()
                if adapter == "full" or "lora_" in n}
        assert got.keys() == want.keys() and len(got) > 0
        for n in want:
            assert torch.equal(got[n], want[n]), n  # bit-exact bf16
        if writer == "mapped":  # the next AHEAD steps' files are prepared: full size, not yet published
            assert sorted(fs.prepared) == list(range(step + 1, step + 1 + AHEAD))
            for ahead in range(step + 1, step + 1 + AHEAD):
                fs.prepared[ahead].result()
                nxt = tmp_path / "r" / f"step_{ahead}"
                assert [q.name for q in nxt.iterdir()] == ["model.safetensors.tmp"]
                assert (nxt / "model.safetensors.tmp").stat().st_size == path.stat().st_size
    fs.finish()
    assert complete_steps(tmp_path / "r") == [0, 1, 2]
    assert sorted(q.name for q in (tmp_path / "r").iterdir()) == ["step_0", "step_1", "step_2"]  # none left half-made
    info = fs.describe()
    assert len(info["sync_s"]) == 3 and info["bytes_per_step"] == sum(t.numel() * 2 for t in got.values())
    if adapter == "lora":
        assert all("lora_" in n for n in got)


@pytest.mark.parametrize("unmap", ["background", "inline"])
def test_mapped_writer_unmaps_off_the_step_after_publishing(dist_group, tmp_path, monkeypatch, unmap):
    """``sync.unmap=background`` (the default): the hand-off publishes each step's file still mapped
    (its stores are in the page cache: the file reads back bit for bit) and the preparation thread
    unmaps it afterwards; ``inline`` unmaps inside the hand-off. Every map is closed by ``finish``."""
    import plugins.sync.filesystem as fsmod

    maps, closes = [], []
    prepare, write = fsmod.prepare_step, fsmod.write_mapped
    monkeypatch.setattr(fsmod, "prepare_step", lambda *a, **k: maps.append(prepare(*a, **k)) or maps[-1])
    monkeypatch.setattr(fsmod, "write_mapped", lambda *a, **k: closes.append(k.get("close", True)) or write(*a, **k))
    args = QWEN3["tiny"]
    b = built(args)
    fs = Filesystem(str(tmp_path), keep=3, cleanup=False, unmap=unmap)
    fs.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=False, row_id="r", handoff=b.adapter.handoff))
    b.sync = fs
    for step in range(2):
        train_step(b, make_batches(args, "rl", 128, 1, "random", 0, step, "cpu"), "rl", step=step)
        got = load_file(str(tmp_path / "r" / f"step_{step}" / "model.safetensors"))
        assert all(torch.equal(got[n], full(p).to(torch.bfloat16)) for n, p in b.model.named_parameters())
    assert closes == [unmap == "inline"] * 2
    fs.finish()
    assert len(maps) == 4 and all(m.closed for m in maps)  # two written, two prepared for steps never run
    assert complete_steps(tmp_path / "r") == [0, 1]
    with pytest.raises(ValueError, match="sync.unmap=background"):
        Filesystem(str(tmp_path), unmap="later")


def test_adapter_only_sync_reproduces_merged_output(dist_group, tmp_path):
    """Inference merges base + alpha/r * B @ A from the synced adapter: same output as the trainer's layer."""
    args = QWEN3["tiny"]
    b = built(args, "lora")
    fs = Filesystem(str(tmp_path), keep=1, cleanup=False)
    fs.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=True, row_id="r", handoff=b.adapter.handoff))
    b.sync = fs
    train_step(b, make_batches(args, "rl", 128, 1, "random", 0, 0, "cpu"), "rl", step=0)
    fs.finish()
    got = load_file(str(tmp_path / "r" / "step_0" / "model.safetensors"))
    layer = b.model.layers[0].self_attn.q_proj
    base = full(layer.base_layer.weight).float()
    A = got["layers.0.self_attn.q_proj.lora_A.default.weight"].float()
    B = got["layers.0.self_attn.q_proj.lora_B.default.weight"].float()
    assert B.abs().sum() > 0  # the step moved B away from its zero init
    merged = base + (8 / 4) * B @ A
    A_t, B_t = full(layer.lora_A["default"].weight).float(), full(layer.lora_B["default"].weight).float()
    x = torch.randn(16, base.shape[1])
    ref = x @ base.T + (8 / 4) * (x @ A_t.T) @ B_t.T  # the trainer's layer, fp32 adapter masters
    out = x @ merged.T
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("writer", ["mapped", "write"])
def test_crash_mid_write_leaves_no_complete_marker(dist_group, tmp_path, monkeypatch, writer):
    import plugins.sync.filesystem as fsmod

    args = QWEN3["tiny"]
    b = built(args)
    fs = Filesystem(str(tmp_path), keep=2, cleanup=False, writer=writer)
    fs.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=False, row_id="r", handoff=b.adapter.handoff))
    fs.after_step(0)

    def torn(path, stager, metadata, fsync, how):
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    def torn_mapped(mm, stager, metadata, fsync, close=True):
        mm[:4] = b"half"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsmod, "write_file", torn)
    monkeypatch.setattr(fsmod, "write_mapped", torn_mapped)
    with pytest.raises(OSError):
        fs.after_step(1)
    assert complete_steps(tmp_path / "r") == [0]
    assert not (tmp_path / "r" / "step_1" / "model.safetensors").exists()


def test_filesystem_refuses_unknown_writer():
    with pytest.raises(ValueError, match="sync.writer=fast is not one of mapped, write, safetensors: try sync.writer=mapped"):
        Filesystem("runs/x", writer="fast")


def test_mapped_writer_refuses_a_dir_that_cannot_map(tmp_path, monkeypatch):
    import plugins.sync.filesystem as fsmod

    def no_map(path, size):
        raise OSError(19, "No such device")
    monkeypatch.setattr(fsmod, "prepare_file", no_map)
    msg = Filesystem(str(tmp_path)).check(SyncContext(predicted_bytes=10))
    assert "cannot hold a memory-mapped file" in msg and "sync.writer=write" in msg
    assert Filesystem(str(tmp_path), writer="write").check(SyncContext(predicted_bytes=10)) is None
    assert not list(tmp_path.iterdir())  # the probe leaves nothing behind


def test_filesystem_refuses_unwritable_or_full_dir(tmp_path):
    bad = Filesystem("/proc/stepbench-cannot-write")
    assert "cannot write weights" in bad.check(SyncContext(predicted_bytes=10))
    full_disk = Filesystem(str(tmp_path))
    msg = full_disk.check(SyncContext(predicted_bytes=2**62))
    assert "GiB free but keeping 2 steps" in msg


def test_bad_sync_dir_one_line_exit_2(tmp_path):
    res = tmp_path / "r.jsonl"
    p = run("model=qwen3_tiny", "device=cpu", "steps=2", "seq_len=128", "+sync=filesystem",
              "sync.dir=/proc/nope", f"results={res}")
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot write weights to sync.dir=/proc/nope" in lines[0], p.stderr


@pytest.mark.parametrize("overlap", ["true"])
def test_broadcast_receiver_verifies_every_step(tmp_path, overlap):
    res = tmp_path / "r.jsonl"
    p = run("model=qwen3_moe_tiny", "adapter=lora", "device=cpu", "steps=3", "seq_len=128", "+sync=nccl",
              "sync.verify=true", f"sync.overlap={overlap}", f"results={res}")
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    info = row["sync_info"]
    assert info["backend"] == "gloo" and info["adapter_only"] and info["bytes_per_step"] > 0
    assert info["verified_steps"] == 3 and len(info["sync_s"]) == 3
    assert row["sync"] == "nccl" + (" overlap" if overlap == "true" else "")


def test_default_hand_off_is_the_published_rows_per_step_work():
    """``sync=auto``: RL full fine-tuning gathers the weights to pinned host memory every step (what
    prime-rl's bench mode did for its RL Full rows); RL LoRA and SFT hand nothing off."""
    from hydra import compose, initialize_config_dir

    from core.resolve import resolve

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        rl = resolve(compose("bench", overrides=["model=qwen3_tiny", "device=cpu", "task=rl"]))
        sft = resolve(compose("bench", overrides=["model=qwen3_tiny", "device=cpu", "task=sft"]))
        lora = resolve(compose("bench", overrides=["model=qwen3_tiny", "device=cpu", "adapter=lora"]))
    assert rl.sync.label == "host" and not rl.sync_ctx.adapter_only
    assert sft.sync.label == "none" and lora.sync.label == "none"
    assert lora.sync_ctx.adapter_only and lora.sync_ctx.predicted_bytes < rl.sync_ctx.predicted_bytes


def test_host_hand_off_copies_the_weights_every_step(dist_group):
    """``+sync=host``: the bf16 weights land in one pinned host buffer every step, equal to the model's."""
    from plugins.sync.host import Host

    args = QWEN3["tiny"]
    b = built(args, "full")
    h = Host()
    h.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=False, row_id="r", handoff=b.adapter.handoff))
    for step in range(2):
        h.after_step(step)
    h.finish()
    info = h.describe()
    assert info["method"] == "host" and len(info["sync_s"]) == 2
    assert info["bytes_per_step"] == 2 * sum(p.numel() for p in b.model.parameters())
    for name, p in b.model.named_parameters():
        assert torch.equal(h.stager.host[name], p.detach().to(torch.bfloat16)), name


def test_filesystem_cleans_up_its_row_directory(dist_group, tmp_path):
    b = built(QWEN3["tiny"])
    fs = Filesystem(str(tmp_path), keep=1)
    fs.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=False, row_id="r", handoff=b.adapter.handoff))
    fs.after_step(0)
    assert complete_steps(tmp_path / "r") == [0]
    fs.finish()
    assert not (tmp_path / "r").exists()


def test_two_ranks_gather_the_same_weights(tmp_path):
    p = subprocess.run([sys.executable, "tests/sync_worker.py", str(tmp_path)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                        "tests/sync_worker.py", str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for tag, least in (("", 5), ("-lora", 4)):  # full weights; LoRA's A and B of each adapted linear
        one = load_file(str(tmp_path / f"world1{tag}" / "step_0" / "model.safetensors"))
        two = load_file(str(tmp_path / f"world2{tag}" / "step_0" / "model.safetensors"))
        assert one.keys() == two.keys() and len(one) > least, tag
        assert all(("lora_" in n) == bool(tag) for n in one), tag
        for n in one:
            assert torch.equal(one[n], two[n]), (tag, n)


def test_moe_full_sync_includes_experts(dist_group, tmp_path):
    b = built(QWEN3_MOE["tiny"])
    fs = Filesystem(str(tmp_path), keep=1, cleanup=False)
    fs.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=False, row_id="r", handoff=b.adapter.handoff))
    fs.after_step(0)
    fs.finish()
    got = load_file(str(tmp_path / "r" / "step_0" / "model.safetensors"))
    assert any("experts" in n for n in got)


def test_mapped_writer_pads_every_step_header_to_one_size(tmp_path):
    """Files are sized before their step is known: step 0 and step 10**12 have the same header size,
    and each loads back with its own step in the metadata."""
    import core.sync
    from plugins.sync.filesystem import WEIGHTS, write_step

    params = [("a", torch.randn(10)), ("b", torch.randn(7, 3))]
    st = core.sync.HostStager(params, torch.bfloat16, 0, torch.device("cpu"), False, chunk=8)
    st.stage()
    sizes = []
    for step in (0, 10**12):
        write_step(st, tmp_path, step, keep=5, fsync=True, how="mapped")
        path = tmp_path / f"step_{step}" / WEIGHTS
        sizes.append(path.stat().st_size)
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["step"] == str(step)
        got = load_file(str(path))
        assert torch.equal(got["a"], params[0][1].bfloat16()) and torch.equal(got["b"], params[1][1].bfloat16())
    assert sizes[0] == sizes[1]


def test_write_file_writes_each_bucket_before_waiting_for_the_next(tmp_path):
    """The writer overlaps the device-to-host copy: when it asks for bucket k, the header and
    buckets before k are already in the file."""
    import core.sync
    from plugins.sync.filesystem import safetensors_header, write_file

    params = [("a", torch.randn(10)), ("b", torch.randn(7, 3))]
    st = core.sync.HostStager(params, torch.bfloat16, 0, torch.device("cpu"), False, chunk=8)
    st.stage()
    path = tmp_path / "w.safetensors"
    header = safetensors_header(st, {"step": "0"})
    seen = []

    def ready_chunks():
        for end in [8, 16, 24, 31]:
            seen.append(path.stat().st_size)
            yield end
    st.ready_chunks = ready_chunks
    write_file(path, st, {"step": "0"}, fsync=False)
    assert seen == [len(header) + 2 * e for e in (0, 8, 16, 24)]
    got = load_file(str(path))
    assert torch.equal(got["a"], params[0][1].bfloat16()) and torch.equal(got["b"], params[1][1].bfloat16())


def test_a_prepared_file_takes_no_page_fault_when_written(tmp_path):
    """The hand-off's copy into a prepared file's map faults on no page (the preparation wrote each
    page once through the map, off the step); measured as the process's minor faults."""
    import mmap
    import resource

    from plugins.sync.filesystem import prepare_file

    size = 64 << 20
    src = torch.ones(size, dtype=torch.uint8)
    mm = prepare_file(tmp_path / "f", size)
    dst = torch.frombuffer(mm, dtype=torch.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    dst.copy_(src)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert torch.equal(dst[:: mmap.PAGESIZE], src[:: mmap.PAGESIZE])
    del dst
    mm.close()
    assert faults <= size // mmap.PAGESIZE // 100, faults  # an untouched map: one fault per few pages


def test_a_receiver_that_dies_at_start_ends_the_row_within_seconds(dist_group, monkeypatch):
    """``+sync=nccl`` whose receiver exits before joining: setup fails with one line in seconds, not
    after the group's 300 s wait."""
    import sys
    import time

    from plugins.sync.nccl import Broadcast

    b = built(QWEN3["tiny"], "full")
    sync = Broadcast(backend="gloo")
    monkeypatch.setattr(Broadcast, "receiver", (sys.executable, "-c", "import sys; sys.exit(3)"))
    t = time.time()
    with pytest.raises(RuntimeError, match="receiver exited with status 3 before joining"):
        sync.setup(b.model, SyncContext(device="cpu", row_id="r", handoff=b.adapter.handoff))
    assert time.time() - t < 30


DIES_AFTER_JOINING = ("import sys; from plugins.sync.nccl import make_group; "
                      "make_group('gloo', '127.0.0.1', int(sys.argv[sys.argv.index('--port') + 1]), 1); sys.exit(5)")


def test_a_receiver_that_dies_mid_run_is_one_line(dist_group, monkeypatch):
    """Round ten: a receiver killed after it joined ended the row in a 34-line traceback (gloo's
    chained connection errors); now the row fails with one line naming the receiver's exit."""
    import sys

    from core.errors import RowError
    from plugins.sync.nccl import Broadcast

    b = built(QWEN3["tiny"], "full")
    sync = Broadcast(backend="gloo")
    monkeypatch.setattr(Broadcast, "receiver", (sys.executable, "-c", DIES_AFTER_JOINING))
    sync.setup(b.model, SyncContext(device="cpu", row_id="r", handoff=b.adapter.handoff))
    with pytest.raises(RowError, match=r"receiver died \(exit status 5\)"):
        sync.before_update()
        sync.after_step(0)


def test_shm_plugin_with_a_folder_on_disk_is_refused(monkeypatch):
    """+sync=filesystem_shm names shared memory: a sync.dir on another filesystem contradicts it
    (one line, what to type instead); one on tmpfs is taken. The mount table is the host's
    (core.bench.mount_type), faked here so the test does not depend on where /tmp lives."""
    from core import bench
    from core.resolve import UserError

    argv = ["+sync=filesystem_shm", "sync.dir=/somewhere/w", "model=qwen3_tiny", "device=cpu"]
    monkeypatch.setattr(bench, "mount_type", lambda path: "ext4")
    with pytest.raises(UserError, match="is on a ext4 filesystem: use \\+sync=filesystem for a folder on disk"):
        bench.check_overrides(argv)
    monkeypatch.setattr(bench, "mount_type", lambda path: "tmpfs")
    assert bench.check_overrides(argv).sync.dir == "/somewhere/w"
    bench.check_overrides(["+sync=filesystem", "sync.dir=/somewhere/w", "model=qwen3_tiny"])  # disk is fine there


def test_mount_type_reads_the_mount_table():
    from core.bench import mount_type

    if mount_type("/") is None:
        pytest.skip("no /proc/mounts here")
    assert mount_type("/proc/self") == "proc"
    assert mount_type("/") not in (None, "proc")


def test_filesystem_removes_only_what_it_wrote(dist_group, tmp_path):
    """The row's folder under sync.dir is named by its id: an id that is a path, or a folder of that
    name holding a file stepbench did not write, is refused and nothing is removed (round seven: a
    row id of /tmp/victim emptied that folder)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep me")
    b = built(QWEN3["tiny"])
    for row_id, root in ((str(victim), tmp_path / "w"), ("..", victim / "w"), ("victim", tmp_path)):
        fs = Filesystem(str(root))
        with pytest.raises(ValueError, match="not a folder name|did not write"):
            fs.setup(b.model, SyncContext(device="cpu", row_id=row_id, handoff=b.adapter.handoff))
        fs.finish()
        assert (victim / "keep.txt").read_text() == "keep me"
    (tmp_path / "w" / "again").mkdir(parents=True)  # a folder a run of the same row left: step files only
    (tmp_path / "w" / "again" / "step_3").mkdir()
    fs = Filesystem(str(tmp_path / "w"))
    fs.setup(b.model, SyncContext(device="cpu", row_id="again", handoff=b.adapter.handoff))
    assert not (tmp_path / "w" / "again" / "step_3").exists()
    fs.finish()


def test_mapped_writer_reuses_dropped_steps_files_unless_a_reader_holds_them(dist_group, tmp_path):
    """``sync.reuse`` (the default): from the third step on, the next step's file is a dropped step's
    (older than the newest ``keep``), renamed and rewritten, and every published step still reads
    back bit for bit; a dropped step a reader holds open is left to the reader (a new file instead),
    and what the reader holds is unchanged."""
    args = QWEN3["tiny"]
    b = built(args)
    fs = Filesystem(str(tmp_path), keep=1, cleanup=False)
    fs.setup(b.model, SyncContext(rank=0, world_size=1, device="cpu", adapter_only=False, row_id="r",
                                  handoff=b.adapter.handoff))
    b.sync = fs
    held = None
    for step in range(6):
        train_step(b, make_batches(args, "rl", 128, 1, "random", 0, step, "cpu"), "rl", step=step)
        path = tmp_path / "r" / f"step_{step}" / "model.safetensors"
        got = load_file(str(path))  # may map the file: let it go before the next step's reuse
        assert all(torch.equal(got[n], full(p).to(torch.bfloat16)) for n, p in b.model.named_parameters())
        del got
        if step == 2:  # a reader opens step 2's file and keeps it open
            held, held_bytes = open(path, "rb"), path.read_bytes()
        for fut in fs.prepared.values():
            fut.result()
    # prepared after steps 0-5: steps 2..7; dropped when each is prepared: none, 0, 1, 2 (held), 3, 4
    assert fs.reused == [False, True, True, False, True, True]
    assert held.read() == held_bytes  # the held file was not reused: the reader's bytes are the step's
    held.close()
    fs.finish()
    assert complete_steps(tmp_path / "r") == [5]
    assert sorted(q.name for q in (tmp_path / "r").iterdir()) == ["step_5"]  # the held step removed too
    assert fs.describe()["reused"] == fs.reused


def test_reuse_is_refused_where_it_does_nothing(tmp_path):
    with pytest.raises(ValueError, match="sync.reuse must be true or false"):
        Filesystem(str(tmp_path), reuse="yes")
    with pytest.raises(ValueError, match="sync.writer=write prepares none"):
        Filesystem(str(tmp_path), writer="write", reuse=False)
