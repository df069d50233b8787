"""A row measured by a peer (``+peer=<name>``): another trainer run on the row's configuration in a
child process, its own figures kept in a row of stepbench's format.

The row resolves like any other (every option checked, the model's shapes and the plugins made),
then the peer (:class:`core.contracts.Peer`) is asked whether it can run it (``why_not``: one line,
status 2), given ``spec.json`` in a work folder under ``runs/peers/<row id>/`` and started; its
output is shown as it comes, and past ``peer.timeout_s`` it is killed (a failed row). Its figures
(TPS and peak memory as it measured them, its step times where it reports them) become the row's;
MFU is stepbench's formula on the peer's TPS (prime-rl's definition, the published column's), so
rows of every trainer are compared on one formula. The row's ``impl`` is the peer's label and its
model label carries it (``Qwen3-0.6B (HF compiled)``), so the peer's rows never stand for
stepbench's own in the results or the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from core.errors import UserError, first_line


class PeerError(RuntimeError):
    """A peer that failed (its exit status, its timeout, a result it could not give): the row's one
    line, no traceback of stepbench's (the peer's own output was shown as it ran)."""


def spec_of(cfg, r) -> "object":
    """The row's configuration as a :class:`core.contracts.PeerSpec` (plain values)."""
    from omegaconf import OmegaConf

    from core.contracts import PeerSpec

    fam = r.family_obj
    hf = dict(r.args.hf_config) if r.args.hf_config else (fam.hf_config(r.args) if fam.hf_config else None)
    if not hf:
        raise UserError(f"the {r.family} family gives no transformers config for a peer to build: pick a model whose "
                        "family has one (model=qwen3_0_6b, model=hf_...)")
    adapter = r.adapter
    # a low-rank adapter says what a peer must build (Adapter.peer_fields: rank, alpha, targets)
    lora = adapter.peer_fields(r.args) if hasattr(adapter, "peer_fields") else {}
    options = OmegaConf.to_container(cfg.peer, resolve=True)
    return PeerSpec(model=r.args.name, hf_name=r.args.hf_name, hf_config=hf, task=str(cfg.task.name),
                    adapter=adapter.name, seq_len=r.seq_len, micro_batches=int(cfg.micro_batches),
                    steps=int(cfg.steps), attn=r.attention.name, ac=r.ac.name,
                    ac_mode=str((cfg.ac or {}).get("mode", "full")), compile=bool(cfg.compile),
                    seed=int(cfg.seed), device=r.ctx.device, handoff=bool(r.sync.hands_off),
                    options={k: v for k, v in options.items() if k != "name"}, **lora)


def check(cfg, r) -> "object":
    """The row's spec, or ``UserError`` where the peer cannot run it (before anything starts): the
    peer runs the row's configuration (model, task, adapter, seq_len, micro-batches, attention, AC)
    with the published per-step work, so stepbench's own options are refused, not ignored."""
    from core.resolve import _primary_defaults, variant_label

    name = r.peer.name
    if str(cfg.get("packing", "single")) != "single":
        raise UserError(f"+peer={name} runs one document of seq_len tokens per micro-batch: use packing=single")
    if str(cfg.sync.name) != _primary_defaults()["sync"]["name"]:
        raise UserError(f"+peer={name} does the published rows' per-step work (the default hand-off: the bf16 weights "
                        f"to host memory for RL full fine-tuning, else nothing): leave +sync={cfg.sync.name} out")
    # the adapter's options are the row's configuration (the spec carries rank, alpha and targets)
    ours = [w for w in variant_label(cfg).split()  # adapter.replicate, adapter.experts: how stepbench runs it
            if not w.startswith(("peer.", "adapter.rank=", "adapter.alpha=", "adapter.targets="))]
    if ours:
        raise UserError(f"{ours[0]} is an option of stepbench's own step, which +peer={name} does not run: leave it out")
    if cfg.get("measure_s"):
        raise UserError(f"measure_s is stepbench's timing; +peer={name} times its own steps: leave measure_s out")
    if r.compile_given:
        raise UserError(f"compile= is an option of stepbench's own step; +peer={name} compiles as the peer does "
                        "(+peer=hf_compiled compiles, +peer=hf_eager does not): leave compile out")
    for opt in ("max_memory_gib", "max_host_gib"):
        if cfg.get(opt) is not None:
            raise UserError(f"{opt} refuses rows by stepbench's predicted memory, and +peer={name}'s memory is its "
                            f"own (a peer that runs out is a failed row): leave {opt} out")
    for opt in ("busy_step", "memory_profile", "ops_profile", "ops_trace"):  # stepbench's profiling of its own step
        if cfg.get(opt) != _primary_defaults().get(opt):
            raise UserError(f"{opt}={str(cfg.get(opt)).lower()} profiles stepbench's own step, which +peer={name} does not run: "
                            f"leave {opt} out")
    if r.family_obj.own_loop(r.args):  # e.g. model.plain=true: a loop of its own inside stepbench's harness
        raise UserError(f"{r.args.name} runs its own loop inside stepbench; +peer={name} runs the peer's: pick the "
                        "model without it (e.g. model.plain=false), or leave +peer out")
    spec = spec_of(cfg, r)
    try:
        why = r.peer.why_not(spec)
    except Exception as e:  # a peer's own check that breaks names the peer
        raise UserError(f"peer '{r.peer.name}' failed its check: {first_line(e)}") from None
    if why:
        raise UserError(f"peer '{r.peer.name}': {why}")
    try:
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the peers' work folder {WORK_ROOT} here ({first_line(e)}): run from a folder "
                        f"where {WORK_ROOT} can be created") from None
    return spec


#: the peers' work folders (``<row id>`` each), under the current folder
WORK_ROOT = Path("runs") / "peers"


def peer_env(cmd) -> dict:
    """The environment of a peer's child: stepbench's (:func:`core.sweep.child_env`) with the
    command's variables added (its PYTHONPATH first, then stepbench's) and ``unset_env`` removed."""
    from core.sweep import child_env

    base = child_env()
    env = {**base, **{k: str(v) for k, v in cmd.env.items()}}
    if cmd.env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cmd.env["PYTHONPATH"]), base.get("PYTHONPATH")]))
    for pat in cmd.unset_env:  # what the peer says its child must not inherit
        for k in [k for k in env if (k.startswith(pat[:-1]) if pat.endswith("*") else k == pat)]:
            del env[k]
    return env


def run(cfg, r, row_id: str, spec=None) -> dict:
    """Run the row's peer (``spec``: what :func:`check` returned, else checked here); return the row's
    measured fields (labels included). A peer that fails raises :class:`PeerError` with its one line
    (a failed row)."""
    from core import flops
    from core.memory import param_count
    from core.measure import say, spread, throughput
    from core.resolve import row_labels
    from core.sweep import stream_child

    spec = spec or check(cfg, r)
    work = (WORK_ROOT / row_id).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    cmd = r.peer.command(spec, str(work))
    env = peer_env(cmd)
    timeout = float((cfg.peer.get("timeout_s") or 1800))
    say(f"peer {r.peer.name}: {' '.join(map(str, cmd.argv))}")
    rc, tail = stream_child([str(a) for a in cmd.argv], env, timeout, out=sys.stderr, prefix="  | ", cwd=cmd.cwd)
    (work / "log.txt").write_text("\n".join(tail) + "\n")  # its last lines (all of them were shown as it ran)
    if rc == -1:  # stream_child's timeout
        raise PeerError(f"peer {r.peer.name} ran past peer.timeout_s={timeout:g} s and was stopped: raise "
                        f"peer.timeout_s (its last lines: {work / 'log.txt'})")
    if rc != 0:
        raise PeerError(f"peer {r.peer.name} failed: {peer_error(rc, tail)} (its last lines: {work / 'log.txt'})")
    try:
        res = r.peer.result(str(work), tail)
    except ValueError as e:
        raise PeerError(f"peer {r.peer.name}: {first_line(e, with_type=False)}") from None
    tokens = r.seq_len * int(cfg.micro_batches)
    step_time = (throughput(res.step_s, tokens, int(cfg.micro_batches))[1] if res.step_s
                 else tokens / res.tps / int(cfg.micro_batches))
    frozen = r.adapter.frozen_base
    adapter_params = r.adapter.trainable_params(r.args) if frozen else 0
    fpt = flops.prime_rl_flops_per_token(r.args, r.seq_len, adapter_params, param_count(r.args), frozen)
    labels = row_labels(cfg, r, 1)  # the peer's model label, impl and the row's AC and attention (its key)
    labels.update(compile=labels["compile"] if res.compiled is None else res.compiled)
    return {
        **labels, "status": "ok", "error": None, "tps": res.tps, "step_time": step_time,
        "mfu": flops.mfu(fpt, res.tps, r.hw["peak_flops"], 1), "flops_per_token_prime_rl": fpt,
        "peak_flops": r.hw["peak_flops"], "peak_mem_gib": res.peak_mem_gib, "predicted_mem_gib": None,
        "steps_measured": len(res.step_s) or None, "spread": spread(res.step_s) if res.step_s else {"n": 0},
        "samples": {"step_s": res.step_s} if res.step_s else {}, "attn_provider": res.attn_provider,
        "peer": {"name": r.peer.name, "label": r.peer.label, "version": res.version,
                 "per_step_work": res.per_step_work, "precision": res.precision, "command": [str(a) for a in cmd.argv],
                 "workdir": str(work), **({"reported": res.extra} if res.extra else {})},
    }


def peer_error(rc: int, tail: list[str]) -> str:
    """The one line of a peer that failed: its last ``SomethingError: ...`` line that is not the
    launcher's wrapper (torchrun's ChildFailedError), else the sweep's reading of its output."""
    import re

    from core.sweep import child_error

    pat = re.compile(r"([A-Za-z_.]*(Error|Exception)): (.+)")
    for ln in reversed(tail):
        m = pat.search(ln)
        if m and "ChildFailedError" not in m.group(1):
            return f"{m.group(1).split('.')[-1]}: {m.group(3).strip()}"[:300]
    return child_error(rc, tail)


def checkout_commit(path: Path) -> str:
    """The checkout's commit: an exported tree's ``UPSTREAM_COMMIT`` file where it has one (a
    ``git archive`` keeps no history), else ``git rev-parse HEAD``."""
    stamp = path / "UPSTREAM_COMMIT"
    if stamp.is_file():
        return stamp.read_text().strip()[:40] + " (exported tree)"
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return out.stdout.strip() if out.returncode == 0 else "unknown commit (not a git checkout)"


class CheckoutPeer:
    """The options of a peer run from a checkout the user points at: ``peer.path`` (the checkout),
    ``peer.python`` (its environment's interpreter, default this one) and ``peer.pythonpath``
    (folders added to the child's import path), plus any other ``path_options`` a subclass names.
    Paths are made absolute from where stepbench runs (the child runs elsewhere)."""

    label = "the peer"
    path_options = ("path", "python", "pythonpath")
    example = "/opt/peer"  #: shown in the refusal of a value that is not a path

    def __init__(self, options: dict):
        for key in self.path_options:
            v = options.get(key)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"peer.{key} must be a path (got {v!r}): e.g. peer.{key}={self.example}")
        self.path = self.absolute(options.get("path"))
        python = options.get("python")
        self.python = self.absolute(python) if python and os.sep in python else (python or sys.executable)
        self.pythonpath = os.pathsep.join(self.absolute(p) for p in (options.get("pythonpath") or "").split(os.pathsep)
                                          if p)

    @staticmethod
    def absolute(p):
        return str(Path(p).expanduser().resolve()) if p else p

    def python_missing(self) -> str | None:
        """One line where ``peer.python`` is no interpreter here, else None."""
        import shutil

        if shutil.which(self.python) or Path(self.python).expanduser().is_file():
            return None
        return f"peer.python={self.python} is not an interpreter here: name {self.label}'s environment's python"
