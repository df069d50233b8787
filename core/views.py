"""The report's comparison views, each saying what it compares: (a) the same configuration as a
published row, (b) the fastest configuration at no more memory, the peers (other implementations
of the same rows), reruns (the same code in other calls), and where the step's time goes."""

from __future__ import annotations

import math
from datetime import datetime

from core.published import (host_gib, implementation, model_name, row_args, same_work, section_name,
                            sync_per_step, work_rank)
from core.results import row_key, row_variant


def ratio_summary(label: str, ratios: list[float]) -> str:
    """The closing line of a comparison view over its (non-empty) ratios."""
    return f"\n{label}, {len(ratios)} row{'s' if len(ratios) != 1 else ''}: geomean {_geomean(ratios):.2f}x, min {min(ratios):.2f}x."


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _pub_key(r: dict) -> tuple:
    return section_name(r), r["type"], r["seq_len"], r["hardware_label"]


def versus_published(rows: list[dict], published: list[dict]) -> str:
    """View (a), same configuration: each published row beside ours with the same model, type,
    seq_len, AC, attention, GPUs and at least the published per-step work (2 micro-batches, one
    packed sample, the published hand-off or more: :func:`core.published.same_work`)."""
    ours = {}
    # among rows of one key, the one doing the published per-step work: the default configuration's
    # where measured (a variant, e.g. fsdp=true, runs the same work with an option off its default)
    for r in sorted(rows, key=lambda r: bool(row_variant(r))):
        ours.setdefault((*_pub_key(r), r["ac"], r["attn"]), []).append(r)
    # the row doing exactly the published work where there is one, else the one closest to it
    lines = ["## View (a): same configuration\n",
             "Each published prime-rl row beside the stepbench row with the same model, type, sequence "
             "length, AC, attention, GPUs and per-step work: 2 micro-batches of one packed sample, and "
             "the published hand-off (prime-rl's bench mode: RL Full gathers the bf16 weights to the host "
             "every step, RL LoRA hands nothing off) or more (a file written every step: the Sync column "
             "says which), timed inside every step. stepbench's LoRA rows also take the optimizer step "
             "that prime-rl's bench mode skipped. `compile` is ours to choose (it does not change the "
             "work) and is shown. Ratio = our TPS / prime-rl's TPS.\n",
             "| Model | Type | SeqLen | AC | Attn | Hardware | Sync (s/step) | Compiled | TPS (ours / prime-rl) | "
             "ratio | Peak Mem (ours / prime-rl) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for p in published:
        cands = [x for x in ours.get((*_pub_key(p), p["ac"], p["attn"]), []) if same_work(x, p)]
        r = min(cands, key=lambda x: (work_rank(x, p), bool(row_variant(x)))) if cands else None
        if r is None:
            continue
        ratio = r["tps"] / p["tps"]
        ratios.append(ratio)
        lines.append(f"| {section_name(p)} | {p['type']} | {p['seq_len']} | {p['ac']} | {p['attn']} | "
                     f"{p['hardware_label']} | {r.get('sync')} ({sync_per_step(r)[0]:.2f}) | "
                     f"{'yes' if r.get('compile') else 'no'} | {r['tps'] / 1e3:.2f}k / {p['tps'] / 1e3:.2f}k | "
                     f"{ratio:.2f}x | {r['peak_mem_gib']:.1f} / {p['peak_mem_gib']:.1f} GiB |")
    if ratios:
        lines.append(f"\nSame configuration, {len(ratios)} row{'s' if len(ratios) != 1 else ''}: geomean {_geomean(ratios):.2f}x, "
                     f"min {min(ratios):.2f}x, max {max(ratios):.2f}x.")
    else:
        lines.append("\nNo row of ours matches a published row with the same per-step work yet.")
    return "\n".join(lines) + "\n"


def best_at_no_more_memory(rows: list[dict], published: list[dict], host_budget_gib: float = 32.0) -> str:
    """View (b): for each published row on hardware we measured, our fastest row of the same
    model, type, sequence length, GPUs and per-step work, any AC or attention, whose GPU peak is
    at most the published peak and whose pinned host memory is within ``host_budget_gib``."""
    lines = ["## View (b): fastest stepbench configuration at no more memory\n",
             "For each published row: our fastest row of the same model, type, sequence length, GPUs "
             "and at least the published per-step work (2 micro-batches of one packed sample; the published "
             "hand-off or more, overlapped with the next step or not), with any AC and attention backend, "
             "whose GPU peak is "
             f"at most the published row's and whose pinned host memory is at most {host_budget_gib:g} GiB "
             "(`--host-budget-gib`). The winning configuration is named.\n",
             "| Model | Type | SeqLen | Hardware | prime-rl (AC, Attn) | TPS | Peak Mem | stepbench (AC, Attn, Sync) "
             "| TPS | Peak Mem | Host | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    hw = {r["hardware_label"] for r in rows}
    ratios = []
    for p in published:
        if p["hardware_label"] not in hw:
            continue
        cands = [r for r in rows if _pub_key(r) == _pub_key(p) and same_work(r, p)
                 and r.get("peak_mem_gib") is not None and r["peak_mem_gib"] <= p["peak_mem_gib"]
                 and host_gib(r) <= host_budget_gib]
        if not cands:
            continue
        b = max(cands, key=lambda r: r["tps"])
        ratios.append(b["tps"] / p["tps"])
        h = host_gib(b)
        lines.append(f"| {section_name(p)} | {p['type']} | {p['seq_len']} | {p['hardware_label']} | "
                     f"{p['ac']}, {p['attn']} | {p['tps'] / 1e3:.2f}k | {p['peak_mem_gib']:.1f} GiB | "
                     f"{b['ac']}, {b['attn']}, {b.get('sync')} | {b['tps'] / 1e3:.2f}k | {b['peak_mem_gib']:.1f} GiB | "
                     f"{f'{h:.1f} GiB' if h else '-'} | {b['tps'] / p['tps']:.2f}x |")
    if ratios:
        lines.append(ratio_summary("Best at no more memory", ratios))
    return "\n".join(lines) + "\n"


def same_run(a: dict, b: dict) -> bool:
    """Whether two row dicts are one run (copies of it: the headline's median is a copy)."""
    return all(a.get(k) == b.get(k) for k in ("id", "time", "tps"))


def same_call(a: dict, b: dict, window_s: float = 1800.0) -> bool:
    """Whether two rows ran in one call on one machine: the same ``run_id`` where both have one;
    for older rows, the same commit and GPU within ``window_s`` (a lease is at most 30 minutes)."""
    if a.get("run_id") and b.get("run_id"):
        return a["run_id"] == b["run_id"]
    ea, eb = a.get("env") or {}, b.get("env") or {}
    if not ea.get("git_commit") or ea.get("git_commit") != eb.get("git_commit") or ea.get("gpu") != eb.get("gpu"):
        return False
    try:
        ta, tb = (datetime.fromisoformat(str(r["time"])) for r in (a, b))
    except (KeyError, ValueError):
        return False
    return abs((ta - tb).total_seconds()) <= window_s


def by_call(rows: list[dict]) -> list[list[dict]]:
    """Rows grouped by the call they ran in (:func:`same_call`), in the order each call first appears."""
    calls: list[list[dict]] = []
    for r in rows:
        home = next((c for c in calls if same_call(c[0], r)), None)
        home.append(r) if home is not None else calls.append([r])
    return calls


class Peers:
    """The peers view's rows: each key's run of every implementation (``impl``: who ran the model,
    as its family declares), the runs of every call, and the failed peer rows. Native rows are keyed
    by their AC and attention; a peer that runs the row's plugins inside its own modules
    (``own_loop`` false) likewise; a peer that runs its own loop (its own AC and attention kernel
    choice) by its attention label alone."""

    def __init__(self, rows, failed, pool):
        self.best: dict = {}  # impl -> key -> row (the shown run)
        self.runs: dict = {}  # impl -> key -> [every run]
        self.failed: dict = {}
        self.own_loop: dict = {}
        rows = [r for r in rows if not r.get("peer")]  # +peer trainers: trainers_view
        pool = [r for r in pool if not r.get("peer")]
        failed = [r for r in failed if not r.get("peer")]
        for r in rows:  # default configurations only (a variant, e.g. fsdp=true, is an A/B of ours)
            if same_work(r, {"type": r["type"]}) and not row_variant(r):
                self.best.setdefault(implementation(r), {}).setdefault(self.key(r), r)
                self.own_loop[implementation(r)] = bool(r.get("own_loop"))
        for r in pool:
            if same_work(r, {"type": r["type"]}) and not row_variant(r):
                self.runs.setdefault(implementation(r), {}).setdefault(self.key(r), []).append(r)
        for r in failed:
            if r.get("own_loop") and all(k in r for k in ("type", "seq_len", "hardware_label")):
                self.failed.setdefault((implementation(r), *self.key(r)), r)
                self.own_loop.setdefault(implementation(r), True)

    @staticmethod
    def key(r) -> tuple:
        base = (model_name(r), r["type"], r["seq_len"], r["hardware_label"])
        if not r.get("own_loop"):
            return (*base, r.get("ac"), r.get("attn"))
        # a +peer row runs the row's AC (its label is the row's): keyed by it too, so it pairs only
        # with the published row of that AC; other own loops pick their own checkpointing
        return (*base, str(r.get("attn")).lower(), *((r.get("ac"),) if r.get("peer") else ()))

    def peers(self) -> tuple[list[str], list[str]]:
        """(implementations run with the row's plugins, implementations with their own loop)."""
        others = sorted(i for i in set(self.best) | set(self.own_loop) if i != NATIVE)
        return [i for i in others if not self.own_loop.get(i)], [i for i in others if self.own_loop.get(i)]

    def partner(self, impl, key, nat):
        """``impl``'s run of ``key``: the one of the native row's call where there is one."""
        here = [r for r in self.runs.get(impl, {}).get(key, []) if nat and same_call(nat, r)]
        return here[-1] if here else self.best.get(impl, {}).get(key)

    def own_loop_keys(self, impl, base, attn, same_kernel: bool, ac=None) -> list[tuple]:
        """The keys of ``impl``'s own-loop runs on the published row's kernel, or on another (its pick);
        a +peer row's key (with its AC) only where its AC is the published row's."""
        keys = set(self.runs.get(impl, {})) | set(self.best.get(impl, {})) | {k[1:] for k in self.failed if k[0] == impl}
        return sorted(k for k in keys if k[:4] == base and (k[4] == attn.lower()) == same_kernel
                      and (len(k) == 5 or ac is None or k[5] == ac))

    def pairs_of_call(self, nat_key, impl, keys):
        """Every (native run, own-loop run) of one call for these keys, oldest own-loop run first."""
        return [(n, pl) for k in keys for pl in self.runs.get(impl, {}).get(k, [])
                for n in self.runs.get(NATIVE, {}).get(nat_key, []) if same_call(n, pl)]

    def native_of(self, key, pairs):
        """The key's native row; where it has no peer run of its own call (``pairs``) but another
        native run of the key has one, the latest such run (the view compares rows of one call)."""
        nat = self.best.get(NATIVE, {}).get(key)
        paired = [n for n, _ in pairs]
        if nat is None or not paired or any(n is nat or same_run(n, nat) for n in paired):
            return nat
        return max(paired, key=lambda n: self.runs[NATIVE][key].index(n))


NATIVE = "native"
PEERS_INTRO = (
    "For each published row: **native** = stepbench's model code with the row's plugins; a peer run with the "
    "same plugins inside its own modules (the `hf` family: a transformers model, `model=hf_*`); and a loop of "
    "its own inside stepbench's harness (`plain HF`: transformers' forward, its gradient checkpointing, the "
    "loss over full fp32 logits, LoRA through peft; `model.plain=true`), twice: on its own pick of attention "
    "kernel and held to the published row's kernel. Cells: TPS (peak memory) [AC, attention]; a cell from "
    "another call than the native row says so; a peer row that failed (e.g. out of memory on its full logits) "
    "shows the error. Ratios = native TPS / that peer's TPS, counted only where both rows ran in the same call "
    "on the same machine (else shown in parentheses and left out of the summary). `prime-rl (published)` is "
    "the January table's figure, for reference. Other trainers run in a process of their own (`+peer=...`) "
    "have their own section below.\n")


def _cell(r) -> str:
    if not r:
        return "-"
    return f"{r['tps'] / 1e3:.2f}k ({r['peak_mem_gib']:.1f} GiB)" if r.get("peak_mem_gib") else f"{r['tps'] / 1e3:.2f}k"


def _loop_cell(r, broke) -> str:
    if r:
        return f"{_cell(r)} [{r['ac']}, {r['attn']}]"
    if broke:
        return f"failed: {str(broke.get('error') or 'error').split(':')[0]} [{broke.get('ac')}, {broke.get('attn')}]"
    return "-"


def _versus(nat, other, ratios: list, pair=None) -> str:
    """A peer column's ratio: of the native and peer runs of one call where there are (with that
    native run's TPS where it is not the one shown), else of the rows shown, in parentheses."""
    if pair:
        n, pl = pair
        x = n["tps"] / pl["tps"]
        ratios.append(x)
        return f"{x:.2f}x" + ("" if nat is not None and same_run(n, nat) else f" (native {n['tps'] / 1e3:.2f}k of its call)")
    if not (nat and other):
        return "-"
    return f"({nat['tps'] / other['tps']:.2f}x, not one call)"


def peers_view(rows: list[dict], published: list[dict], failed: list[dict] = (), pool: list[dict] = ()) -> str:
    """For each published row: stepbench's native row beside every peer implementation's row (same
    model, type, sequence length, GPUs and per-step work). Peer runs are taken from the native row's
    own call where ``pool`` (every run, not only each key's median) has one there."""
    v = Peers(rows, failed, pool)
    plugins, loops = v.peers()
    if not plugins and not loops:
        return ""
    head = ["Model", "Type", "SeqLen", "AC", "Attn", "Hardware", "prime-rl (published)", "native", *plugins]
    for i in loops:
        head += [f"{i}, its pick", f"native / {i}", f"{i}, same kernel", f"native / {i} same kernel"]
    lines = ["## Peers: other implementations in stepbench's harness\n", PEERS_INTRO, "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    ratios: dict = {}
    for p in published:
        base = (p["model"], p["type"], p["seq_len"], p["hardware_label"])
        nat_key = (*base, p["ac"], p["attn"])
        pairs = {(i, same): v.pairs_of_call(nat_key, i, v.own_loop_keys(i, base, p["attn"], same, p["ac"]))
                 for i in loops for same in (False, True)}
        nat = v.native_of(nat_key, [x for ps in pairs.values() for x in ps])
        cells = []
        for i in plugins:
            r = v.partner(i, nat_key, nat)
            cells.append(_cell(r) + (" (other call)" if r and nat and not same_call(nat, r) else ""))
        shown = bool([c for c in cells if c != "-"])
        for i in loops:
            for same in (False, True):
                pair = (pairs[(i, same)] or [None])[-1]
                keys = v.own_loop_keys(i, base, p["attn"], same, p["ac"])
                cands = [v.partner(i, k, nat) for k in keys]
                r = pair[1] if pair else max([c for c in cands if c], key=lambda c: c["tps"], default=None)
                broke = None if r else next((v.failed[(i, *k)] for k in keys if (i, *k) in v.failed), None)
                shown = shown or bool(r or broke)
                label = f"{i} with the same attention kernel" if same else i
                cells += [_loop_cell(r, broke), _versus(nat, r, ratios.setdefault(label, []), pair)]
        if shown:
            lines.append(f"| {p['model']} | {p['type']} | {p['seq_len']} | {p['ac']} | {p['attn']} | "
                         f"{p['hardware_label']} | {p['tps'] / 1e3:.2f}k | {_cell(nat)} | " + " | ".join(cells) + " |")
    for label, xs in ratios.items():
        if xs:
            lines.append(ratio_summary(f"native / {label}", xs))
    work = per_step_work([r for rs in v.runs.values() for ks in rs.values() for r in ks])
    if work:
        lines += ["", "What each side does per step, beyond forward, backward and gradient clipping:", "", *work]
    return "\n".join(lines) + "\n"


def per_step_work(rows: list[dict]) -> list[str]:
    """One line per implementation and type: what its rows do per step (a peer's own words,
    ``peer.per_step_work``; stepbench's from the row's hand-off and adapter)."""
    seen: dict = {}
    for r in rows:
        impl, typ = implementation(r), r.get("type", "?")
        if (r.get("peer") or {}).get("per_step_work"):
            what = r["peer"]["per_step_work"]
        elif impl == NATIVE:  # its hand-off as the Sync column names it (docs/weight-sync.md says what each does)
            what = f"AdamW step on fp32 master weights; weight hand-off: {r.get('sync') or '-'}"
        else:
            continue
        seen.setdefault((impl, typ), set()).add(what)
    return [f"- **{impl}**, {typ}: {'; or '.join(sorted(ws))}" for (impl, typ), ws in
            sorted(seen.items(), key=lambda x: (x[0][0] != NATIVE, x[0]))]


def reruns_view(pool: list[dict]) -> str:
    """Rows run again on the same code in another call (often another lent machine): each call's
    TPS (its median run) and their spread, max / min - 1. The same code means the same
    ``env.source_digest`` (a digest of the source files), so the spread is what a rerun gives:
    machine and run-to-run variation, no code change."""
    groups: dict = {}
    for r in sorted(pool, key=lambda r: str(r.get("time", ""))):
        digest = (r.get("env") or {}).get("source_digest")
        if digest:
            groups.setdefault((row_key(r), digest), []).append(r)
    lines, spreads = [], []
    for (_, digest), rs in groups.items():
        calls = by_call(rs)
        if len(calls) < 2:
            continue
        tps = [sorted(x["tps"] for x in c)[(len(c) - 1) // 2] for c in calls]
        spread = max(tps) / min(tps) - 1
        spreads.append(spread)
        r = rs[0]
        each = ", ".join(f"{t / 1e3:.2f}k ({str((c[0].get('env') or {}).get('git_commit') or '?')[:7]}, "
                         f"{str(c[0].get('time', '?'))[:10]})" for t, c in zip(tps, calls))
        lines.append(f"| {r['model']} | {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | "
                     f"{r.get('hardware_label', '-')} | {r.get('variant') or '-'} | {digest[:8]} | {each} | "
                     f"{100 * spread:.1f}% |")
    if not lines:
        return ""
    head = ["## Reruns: the same row on the same code in another call\n",
            "Rows measured in more than one device call (a fresh process, often on another lent machine) "
            "with the same source code (`env.source_digest`): each call's TPS (its median run) with the "
            "commit that ran it, and the spread max / min - 1. Differences here are the call's (machine, "
            "where it changed, and run to run), not the code's.\n",
            "| Model | Type | SeqLen | AC | Attn | Hardware | Variant | Source | TPS per call | Spread |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    srt = sorted(spreads)
    tail = f"\n{len(spreads)} rows run again: median spread {100 * srt[(len(srt) - 1) // 2]:.1f}%, " \
           f"largest {100 * srt[-1]:.1f}%."
    return "\n".join(head + lines) + "\n" + tail + "\n"


def step_budget_of(r: dict) -> dict | None:
    """A row's ``step_budget`` (:func:`core.flops.step_budget`): stored in rows since it was added,
    worked out from the stored row for older rows of one packed document per micro-batch."""
    if r.get("step_budget"):
        return r["step_budget"]
    from core import flops
    from core.plugins import make

    c, ceil = r.get("config") or {}, r.get("ceilings")
    if r.get("packing") != "single" or not ceil or not c.get("ac") or not r.get("step_time") \
            or (r.get("sync_info") or {}).get("includes_gpu_tail"):
        return None  # several documents, no ceilings, or a hand-off figure that includes GPU work
    try:
        a = row_args(r)
        ac, adapter = make("ac", c["ac"]), make("adapter", c["adapter"])
    except Exception:  # a row of a family or plugin not installed here
        return None
    sf = flops.micro_batch_flops(a, [int(r["seq_len"])], adapter.frozen_base,
                                 (r.get("counts") or {}).get("adapter", 0), ac.recompute)
    total, exposed = sync_per_step(r)
    handoff = exposed if "overlap" in str(r.get("sync")) else total
    return flops.step_budget([sf], ceil, r["step_time"], handoff / (r.get("micro_batches") or 2))


def plot_views(rows: list[dict], published: list[dict], host_budget_gib: float) -> dict:
    """Per published configuration, the rows views (a) and (b) show: ``same`` and ``best``."""
    from core.plots import config_key

    out = {}
    for p in published:
        same = [r for r in rows if (*_pub_key(r), r["ac"], r["attn"]) == (*_pub_key(p), p["ac"], p["attn"])
                and same_work(r, p)]
        best = [r for r in rows if _pub_key(r) == _pub_key(p) and same_work(r, p) and r.get("peak_mem_gib")
                and r["peak_mem_gib"] <= p["peak_mem_gib"] and host_gib(r) <= host_budget_gib]
        if same or best:
            out[config_key(p)] = {"same": min(same, key=lambda x: (work_rank(x, p), bool(row_variant(x))))
                                  if same else None, "best": max(best, key=lambda x: x["tps"]) if best else None}
    return out


def budget_view(rows: list[dict]) -> str:
    """Where the time of each native row doing a published row's per-step work goes: the useful work
    at the measured ceilings (the roofline fraction), what its configuration runs again (recompute,
    the chunked head) and its weight hand-off, and the rest; ``attainable`` is the roofline fraction
    with the rest at zero."""
    lines = ["## Where the step goes\n",
             "Each native row's time per micro-batch, split: **useful** = its useful FLOPs at the measured "
             "matmul and attention ceilings (the Roofline column); **recompute** = what the configuration "
             "executes again (activation recompute; the chunked head's logits in backward) at the same "
             "ceilings; **hand-off** = the weight hand-off the step waited for; **other** = the rest (kernels "
             "below their ceilings, memory-bound kernels, an idle GPU). **Attainable** = useful / (useful + "
             "recompute + hand-off): the roofline fraction this configuration would reach if every kernel ran "
             "at its ceiling and nothing else took time. Rows doing a published row's per-step work (2 micro-batches "
             "of one document; the published hand-off or more); a negative `other` means "
             "kernels ran above the ceilings measured for them. From the row's one profiled step "
             "(`busy_step`, timed apart from the measured steps, profiler overhead included): **GPU idle** = "
             "the share of its wall time with no kernel or copy on the GPU (a host-bound step; the hand-off's "
             "host-side copy counts here too), **memory-bound** = the device time of elementwise, reduction "
             "and copy kernels (what fused kernels would shrink).\n",
             "| Model | Type | SeqLen | AC | Attn | Compiled | Variant | useful | recompute | hand-off | other "
             "| attainable | GPU idle | memory-bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    n = 0
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    for r in sorted(rows, key=lambda r: (section_name(r), r["type"], int(r["seq_len"]), r["ac"], r["attn"])):
        b = step_budget_of(r) if same_work(r, {"type": r["type"]}) else None
        if not b:
            continue
        n += 1
        kinds = r.get("gpu_time_by_kind") or {}
        idle = 1.0 - r["gpu_busy"] if r.get("gpu_busy") is not None else None
        mem = sum(kinds.get(k, 0.0) for k in ("elementwise", "reduction", "copy")) if kinds else None
        lines.append(f"| {section_name(r)} | {r['type']} | {r['seq_len']} | {r['ac']} | {r['attn']} | "
                     f"{'yes' if r.get('compile') else 'no'} | {r.get('variant') or '-'} | {pct(b['useful'])} | "
                     f"{pct(b['recompute'])} | {pct(b['handoff'])} | {pct(b['other'])} | {pct(b['attainable'])} | "
                     f"{pct(idle)} | {pct(mem)} |")
    return "\n".join(lines) + "\n" if n else ""


def failures_view(rows: list[dict], failed: list[dict], published_failed: list[dict]) -> str:
    """The published table's failures whose configuration the error itself gives (``failed_cells`` of
    ``prime-rl-configs.yaml``): "published: failed" beside each implementation's fastest run of that
    configuration here (native and peers), and its own failed runs."""
    from core.published import configs

    lines = []
    for c in configs().get("failed_cells") or []:
        n = sum(1 for f in published_failed if (f.get("hf_name"), f.get("type"), f.get("hardware_label"))
                == (c["hf_name"], c["type"], c["hardware_label"]))
        model = c["hf_name"].split("/")[-1]

        def match(r):
            return (model_name(r), r.get("type"), r.get("hardware_label")) == (model, c["type"], c["hardware_label"]) \
                and str(r.get("seq_len")) == str(c["seq_len"])

        best: dict = {}
        for r in rows:
            if match(r) and r["tps"] > best.get(implementation(r), {"tps": -1})["tps"]:
                best[implementation(r)] = r
        broke = {}
        for r in failed:
            if match(r) and implementation(r) not in best:
                broke.setdefault(implementation(r), r)
        cells = [f"{i}: {_loop_cell(r, None)}" for i, r in sorted(best.items(), key=lambda x: x[0] != NATIVE)]
        cells += [f"{i}: {_loop_cell(None, r)}" for i, r in sorted(broke.items())]
        lines.append(f"| {model} | {c['type']} | {c['seq_len']} | {c['hardware_label']} | failed{f' ({n}x)' if n > 1 else ''}: "
                     f"{c['why']} | {'; '.join(cells) or 'not run yet'} |")
    if not lines:
        return ""
    head = ["## The published failures, run here\n",
            "Configurations the published table lists as failed, where the error gives the configuration. Each "
            "implementation's fastest run here (TPS (peak memory) [AC, attention]), or its failure.\n",
            "| Model | Type | SeqLen | Hardware | Published | Here |", "|---|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"



TRAINERS_INTRO = (
    "Other trainers run by `+peer=...` on the row's configuration, each in a child process of the same "
    "call as stepbench's rows (`prime-rl` = prime-rl's trainer in its bench mode; `HF compiled` / `HF eager` = "
    "a transformers loop with the Trainer's bf16 recipe, each decoder layer compiled or not); their TPS and "
    "peak memory are their own. Only rows of one call on one machine are compared; a trainer run with no "
    "stepbench row of its configuration in its call is listed without a ratio. **Compiled**: what the trainer "
    "says it compiled; for the HF loop, dynamo's graphs and graph breaks (wholly compiled, it builds one graph "
    "for every decoder layer and one for the log-prob head; more graphs are recompiles, and a recompile limit "
    "hit means later layers ran eager: that row understates the loop).\n")


def _compiled(r) -> str:
    """What a +peer row says it compiled: dynamo's graphs and breaks (and recompile-limit hits) where it
    reports them, else yes/no from the row."""
    rep = (r.get("peer") or {}).get("reported") or {}
    dyn = rep.get("dynamo") if isinstance(rep, dict) else None
    if dyn and dyn.get("graphs"):
        out = f"{dyn['graphs']} graphs, {dyn.get('graph_breaks', 0)} breaks"
        return out + (", recompile limit hit" if dyn.get("recompile_limit_hits") else "")
    return "yes" if r.get("compile") else "no"


def _pick(rows, calls_with, better=lambda r: r["tps"]):
    return max((r for r in rows if calls_with(r)), key=better, default=None)


def trainers_view(pool: list[dict], failed: list[dict], published: list[dict], host_budget_gib: float = 32.0) -> str:
    """The ``+peer`` trainers against stepbench in the same call: (1) the same configuration (model,
    type, sequence length, AC, attention kernel), a line per trainer run; (2) for each published
    row, each side's fastest run of that call within the published row's memory (any AC and kernel;
    stepbench's offload within ``host_budget_gib`` of pinned host memory)."""
    runs = [r for r in pool if r.get("peer") and same_work(r, {"type": r["type"]})]
    broke = [r for r in failed if r.get("peer") and all(k in r for k in ("type", "seq_len", "hardware_label"))]
    if not runs and not broke:
        return ""
    # stepbench's side: its own step, on its native model code or on a transformers model (the hf
    # family), not a loop of another's run inside its harness (``own_loop``: model.plain=true)
    natives = [r for r in pool if not r.get("own_loop") and not r.get("peer") and not row_variant(r)
               and same_work(r, {"type": r["type"]})]

    def base(r):
        return model_name(r), r["type"], r["seq_len"], r.get("hardware_label")

    # (1) the same configuration: the latest run of each trainer, configuration and call
    latest: dict = {}
    for r in sorted(runs, key=lambda r: str(r.get("time", ""))):
        latest[(r["impl"], base(r), r["ac"], r["attn"], r.get("run_id") or r.get("time"))] = r
    same_ratios: dict = {}
    lines = ["## Other trainers, in the same call\n", TRAINERS_INTRO,
             "### Same configuration\n",
             "| Model | Type | SeqLen | AC | Attn | Hardware | Trainer | Compiled | its TPS (peak) | "
             "stepbench, same call (peak) | stepbench / trainer |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (impl, b, ac, attn, _), r in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
        nat = _pick(natives, lambda n: base(n) == b and n["ac"] == ac and n["attn"] == attn and same_call(n, r),
                    better=lambda n: (implementation(n) == NATIVE, str(n.get("time", ""))))
        x = nat["tps"] / r["tps"] if nat else None
        if x:
            same_ratios.setdefault(impl, []).append(x)
        lines.append(f"| {b[0]} | {b[1]} | {b[2]} | {ac} | {attn} | {b[3]} | {impl} | {_compiled(r)} | {_cell(r)} | "
                     f"{_cell(nat)} | {f'{x:.2f}x' if x else '-'} |")
    for r in broke:
        lines.append(f"| {model_name(r)} | {r['type']} | {r['seq_len']} | {r.get('ac')} | {r.get('attn')} | "
                     f"{r.get('hardware_label')} | {r.get('impl')} | - | failed: {str(r.get('error') or 'error')[:80]} | "
                     "- | - |")
    for impl, xs in sorted(same_ratios.items()):
        lines.append(ratio_summary(f"stepbench / {impl}, same configuration and call", xs))

    # (2) each side's fastest within the published row's memory, per call
    best_lines, best_ratios = [], {}
    calls = by_call(runs)
    for p in published:
        pb, limit = (p["model"], p["type"], p["seq_len"], p["hardware_label"]), p.get("peak_mem_gib")
        if not limit:
            continue
        limit += 0.05  # the published peak is rounded to 0.1 GiB
        for call in calls:
            mine = [r for r in call if base(r) == pb]
            if not mine:
                continue
            nat = _pick(natives, lambda n: base(n) == pb and same_call(n, call[0]) and n.get("peak_mem_gib")
                        and n["peak_mem_gib"] <= limit and host_gib(n) <= host_budget_gib)
            for impl in sorted({r["impl"] for r in mine}):
                theirs = [r for r in mine if r["impl"] == impl]
                fit = _pick(theirs, lambda r: r.get("peak_mem_gib") and r["peak_mem_gib"] <= limit)
                if fit and nat:
                    x = nat["tps"] / fit["tps"]
                    best_ratios.setdefault(impl, []).append(x)
                    verdict, peer_cell = f"{x:.2f}x", _loop_cell(fit, None)
                else:
                    low = min(theirs, key=lambda r: r.get("peak_mem_gib") or math.inf)
                    peer_cell = f"none within (its least: {_loop_cell(low, None)})"
                    verdict = (f"no run within (any memory: {nat['tps'] / max(r['tps'] for r in theirs):.2f}x)"
                               if nat else "-")
                best_lines.append(f"| {pb[0]} | {pb[1]} | {pb[2]} | {p['ac']}, {p['attn']}: {p['tps'] / 1e3:.2f}k "
                                  f"({p['peak_mem_gib']:.1f} GiB) | {impl} | {peer_cell} | {_loop_cell(nat, None)} | "
                                  f"{verdict} |")
    if best_lines:
        lines += ["", "### Each side's fastest within the published row's memory\n",
                  "For each published row with trainer runs of its model, type and length: each side's fastest run "
                  "of one call at no more GPU memory than the published row's peak (any AC and attention kernel; "
                  f"stepbench's offload within {host_budget_gib:g} GiB of pinned host memory). Where a trainer has no "
                  "run of that call within it, its ratio at any memory is shown instead, and left out of the summary."
                  "\n",
                  "| Model | Type | SeqLen | published (AC, attn: TPS, peak) | Trainer | its fastest within | "
                  "stepbench's fastest within | stepbench / trainer |", "|---|---|---|---|---|---|---|---|"]
        lines += best_lines
        for impl, xs in sorted(best_ratios.items()):
            lines.append(ratio_summary(f"stepbench / {impl}, fastest within the published memory", xs))
    work = per_step_work([*runs, *[n for n in natives if any(same_call(n, r) for r in runs)]])
    if work:
        lines += ["", "What each side does per step, beyond forward, backward and gradient clipping:", "", *work]
    return "\n".join(lines) + "\n"
