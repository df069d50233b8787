"""``python -m core.bench``: one benchmark row, or a sweep of rows with ``-m``.

    python -m core.bench +attn=fa3 +ac=offload model=qwen3_4b     # one row
    python -m core.bench -m +attn=fa2,fa3 +ac=recompute,offload   # a sweep = a table
    python -m core.bench --list                                   # plugins and config options

A single row runs in this process. In a sweep each row runs in a fresh child process (clean CUDA
context, true peak memory; a crash, OOM or timeout becomes a failed row) and the sweep goes on
(:mod:`core.sweep`). Options are checked once before anything is allocated (:mod:`core.options`,
:mod:`core.resolve`); the measured part is :mod:`core.measure`. Rows are appended to ``results``
(JSON lines). Bad input exits with status 2 and one line that says what to type instead.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports: Ctrl-C while starting is one line, status 130
    from core.errors import exit_on_ctrl_c_while_starting

    exit_on_ctrl_c_while_starting("stepbench")

import math
import os
import re
import resource
import sys
import traceback
import uuid

from core.measure import say
from core.errors import StdoutError, ignore_further_ctrl_c, stopped
from core.resolve import UserError, first_line
from core.sweep import CHILD_ENV

GROUPS = ("model", "task", "adapter", "hardware", "attn", "ac", "sync", "kernels", "peer", "sweep")


def run_row(cfg) -> int:
    """Resolve, run and write one row. Returns the exit status."""
    from omegaconf import OmegaConf

    from core.measure import NonFiniteError, measure
    from core.plugins import notify_row
    from core.provenance import environment
    from core.resolve import resolve, row_labels
    from core.results import ResultsError, append_row, check_writable, rescue_row
    from core.sweep import base_row

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        if rank == 0:  # first: resolving makes sync.dir, which a refused destination would leave behind
            check_writable(cfg.results)
        r = resolve(cfg, world)
        if rank == 0:
            gpu_record(cfg.results, r.ctx.device)
        spec = None
        if r.peer is not None:  # refused before anything starts where the peer cannot run the row
            from core import peers

            spec = peers.check(cfg, r)
    except (UserError, ResultsError) as e:
        say(str(e))
        return 2
    for n in r.notes:
        if rank == 0:
            say(n)
    base = {**base_row(cfg, None, os.environ.get(CHILD_ENV) or uuid.uuid4().hex),
            "config": OmegaConf.to_container(cfg, resolve=True)}
    if rank == 0:
        by = f" by peer {r.peer.name}" if r.peer is not None else ""
        say(f"row: {r.args.name} {cfg.task.name} {r.adapter.label} seq_len={r.seq_len} attn={r.attention.name} "
            f"ac={r.ac.label} sync={r.sync.label} on {world}x{r.hw['label']} ({r.ctx.device}){by}")
        if r.peer is None and r.args.n_layers > MANY_LAYERS:  # building and warming so many blocks takes a while
            say(f"  building {r.args.n_layers} layers, then a warm-up step through each: this takes a while")
    status = 0
    try:
        if r.peer is not None:
            from core import peers

            row = {**base, **peers.run(cfg, r, base["id"], spec), "env": environment()}
        else:
            row = {**base, **measure(cfg, r, base["id"]), "env": environment()}
    except Exception as e:  # a failed row keeps the first line of its error
        from core.errors import RowError
        from core.peers import PeerError

        status = 2 if isinstance(e, UserError) else 1
        if status == 1 and not isinstance(e, (NonFiniteError, PeerError, RowError)):
            traceback.print_exc()
        if isinstance(e, (PeerError, RowError)) and rank == 0:  # a peer's own output came before: its one line last
            say(str(e))
        row = {**base, **row_labels(cfg, r, world), "status": "failed", "error": first_line(e),
               "predicted_mem_gib": r.predicted_gib, "env": environment()}
    if rank == 0:
        try:
            append_row(cfg.results, row)
        except OSError as e:  # the destination failed after the row was measured: the row is kept apart
            where = rescue_row(row, e)
            say(f"results={cfg.results} did not take the row ({first_line(e)}): the row is in {where}")
            status = status or 2
        else:
            where = cfg.results
        notify_row(row)
        try:
            print(format_row(row), flush=True)
        except OSError as e:  # stdout a full disk, a closed pipe: the row is kept all the same
            from core.errors import drop_stdout

            drop_stdout()  # what is still buffered would fail again at exit
            say(f"stdout cannot be written ({first_line(e)}): the row is in {where}")
            status = status or 1
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # rank 0 has written the row; no rank tears down while another works
        dist.destroy_process_group()
    return status


def gpu_record(results, device) -> None:
    """A CPU row is not appended to the checkout's benchmarks/results/ (the GPU rows the report and
    the predictor read, committed): refused with one line."""
    from pathlib import Path

    from core.sweep import ROOT

    if str(device).startswith("cpu"):
        record = (ROOT / "benchmarks" / "results").resolve()
        path = Path(str(results)).expanduser().resolve()
        linked = path.is_file() and path.stat().st_nlink > 1 and any(  # a hard link to one of them
            f.is_file() and os.path.samefile(f, path) for f in record.rglob("*.jsonl"))
        if path.is_relative_to(record) or linked:
            raise UserError(f"results={results} is in benchmarks/results/, the GPU rows the report reads, and this "
                            "row runs on the CPU: name another file, e.g. results=runs/rows.jsonl")


#: a model with more layers than any published one: its row says why the start is slow
MANY_LAYERS = 128


def format_row(row: dict) -> str:
    """The one line printed for a finished row."""
    if row.get("status") != "ok":
        return f"FAILED {row.get('model')} {row.get('type')} {row.get('seq_len')}: {row.get('error')}"
    if row.get("peak_mem_gib") is not None:
        peak = f"peak {row['peak_mem_gib']:.1f} GiB"
    else:  # no GPU: the process's peak resident memory, labelled as such
        peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (host)"
    sp = row.get("spread") or {}
    cv = f" (cv {100 * sp['cv']:.1f}%, n={sp['n']})" if sp.get("n") else ""
    sync = f" | sync {row['sync']} {row.get('sync_s_per_step', 0):.3f}s/step" if row.get("sync_s_per_step") else ""
    att = (row.get("step_budget") or {}).get("attainable")
    if att and row["roofline_frac"] > att:  # kernels ran above the ceilings measured for them
        att = f" (above the {100 * att:.0f}% attainable at its measured ceilings: a ceiling is low)"
    else:
        att = f" of {100 * att:.0f}% attainable" if att else ""
    if row.get("peak_mem_gib") is None:  # a CPU row: MFU and roofline against a nominal profile mean nothing
        mfu, roof = "MFU n/a (CPU)", "roofline n/a (CPU)"
    elif row.get("peer"):  # another trainer's figures: no roofline of ours
        mfu, roof = f"MFU {row['mfu']:.1f}%", f"measured by {row['peer']['label']}"
    else:
        mfu, roof = f"MFU {row['mfu']:.1f}%", f"roofline {100 * row['roofline_frac']:.0f}%{att}"
    return (f"{row['model']} | {row['type']} | {row['seq_len']} | {row['ac']} | {row['attn']} | "
            f"{row['hardware_label']} | {mfu} | TPS {row['tps'] / 1e3:.2f}k{cv} | "
            f"step {row['step_time']:.2f}s | {peak} | {roof}{sync} | "
            f"{row['attn_provider']}" + (f" | {row['variant']}" if row.get("variant") else "")
            + (f" | {row['graph_breaks']} GRAPH BREAKS" if row.get("graph_breaks") else ""))


# ----------------------------------------------------------------------------- entry points
def _hydra_task(cfg) -> None:
    from core.errors import raise_on_ctrl_c

    raise_on_ctrl_c()  # the configuration is composed: rows run from here, and Ctrl-C stops them cleanly
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from core.sweep import run_sweep_config, sweep_row

    hc = HydraConfig.get()
    if cfg.get("sweep") is not None or hc.mode == RunMode.MULTIRUN:
        from core.results import ResultsError, check_writable

        try:
            check_writable(cfg.results, sweep=True)
        except ResultsError as e:
            say(str(e))
            sys.exit(2)
        try:
            if cfg.get("sweep") is not None:
                run_sweep_config(cfg, list(hc.overrides.task))
            else:
                sweep_row(cfg, list(hc.overrides.task))
        except UserError as e:  # the results file stopped taking rows: the sweep cannot go on
            say(str(e))
            sys.exit(2)
        return
    from core.errors import watch_ctrl_c

    watch_ctrl_c("stepbench")  # one row in this process: Ctrl-C ends it even inside a long kernel
    status = run_row(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun worker: the row is written
        from core.trainer import exit_now

        exit_now(status)
    if status:
        sys.exit(status)


def list_plugins() -> None:
    from core.options import OPTIONS
    from core.plugins import registry

    reg = registry()
    for kind in ("attn", "ac", "adapter", "sync", "kernels", "peer", "model_family"):
        print(f"{kind}:")
        for name in reg.names(kind):
            e = reg.get(kind, name)
            print(f"  {name:<12} {e.doc}  [{e.provider}]")
    for name, err in reg.broken:
        print(f"broken plugin {name}: {err}")
    print("options: " + ", ".join(sorted(OPTIONS)))
    print("groups: model= task= adapter= hardware= +attn= +ac= +sync= +kernels= +peer= +sweep= (see conf/)")


#: the flags Hydra's command line takes that stepbench passes on (with ``--list``, stepbench's); its
#: config path, name and dir are stepbench's own
HYDRA_FLAGS = {"-m", "--multirun", "-c", "--cfg", "--info", "-h", "--help", "--hydra-help", "-p", "--package",
               "--resolve", "--shell-completion", "-sc", "--list"}


def check_overrides(argv: list[str]):
    """Refuse unknown group options with one line (before Hydra prints its multi-line error).
    Returns the composed config (sweep overrides left out), validated."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from core.options import APPENDED, conf_dir

    valued = {"-p", "--package"}
    seen: dict = {}
    for prev, a in zip([None, *argv], argv):
        if prev in valued:  # the flag's value
            continue
        if not a.startswith("-") and "=" in a:
            key = a.split("=", 1)[0].lstrip("+~")
            if len(key) > 200:  # no option is named so (Hydra would look for a config file of that name)
                raise UserError(f"unknown option '{key[:40]}...' ({len(key):,} characters): python -m core.bench --list "
                                "shows every option")
            if key in seen:
                raise UserError(f"{key} is given twice ({seen[key]} and {a}): keep one")
            seen[key] = a
            if "${" in a.split("=", 1)[1]:
                raise UserError(f"{a}: interpolations (${{...}}) are not taken on the command line: type the value")
            if key in {f"{g}.name" for g in ("attn", "ac", "sync", "kernels", "peer", "adapter")}:
                g = key.split(".")[0]
                raise UserError(f"{a} renames the chosen {g} plugin without choosing it: type "
                                f"{'+' if g in APPENDED else ''}{g}={a.split('=', 1)[1]}")
            if key.startswith(("hydra.", "hydra/")) or key == "hydra":
                raise UserError(f"{a}: Hydra's own settings are stepbench's (outputs under runs/hydra): leave "
                                f"{key} out")
        if a.startswith("-") and a.split("=", 1)[0] not in HYDRA_FLAGS:
            raise UserError(f"unknown flag '{a}': use -m for a sweep, --list for the plugins and options, "
                            "--help for Hydra's help")
        if not a.startswith("-") and "=" not in a:
            raise UserError(f"'{a}' is not an override: type key=value (e.g. seq_len=8192), or +group=name "
                            "(e.g. +attn=fa3); python -m core.bench --list shows them")
    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith("hydra.")]
    flags = [a for a in argv if a in ("-m", "--multirun")]
    if len(flags) > 1:
        raise UserError(f"{' and '.join(flags)} are one flag given {len(flags)} times: give -m once")
    parser = OverridesParser.create()
    for o in overrides:  # one at a time: the message names the override that does not parse
        try:
            parser.parse_override(o)
        except Exception:
            raise UserError(f"cannot parse {o!r}: type key=value (one '='), a list as key=[a,b], a sweep as "
                            "key=a,b with -m, and quote other characters for Hydra inside the shell's quotes: \"key='~/a b'\"") from None
    parsed = parser.parse_overrides(overrides)
    from hydra.core.override_parser.types import ValueType

    for o in parsed:
        if o.value_type in (ValueType.GLOB_CHOICE_SWEEP, ValueType.INTERVAL_SWEEP):
            raise UserError(f"'{o.input_line}': glob() and interval() sweeps are not taken: list the values, e.g. "
                            f"{o.key_or_group}=a,b with -m (python -m core.bench --list shows the choices)")
    flagged = any(a in ("-m", "--multirun") for a in argv)
    if flagged and any(o.key_or_group == "sweep" for o in parsed):
        raise UserError("+sweep=... is a sweep already: leave -m out (or sweep with -m and lists, without +sweep)")
    multirun = flagged or any(o.key_or_group == "sweep" for o in parsed)
    sweep_file = next((o for o in parsed if o.key_or_group == "sweep" and not o.is_sweep_override()), None)
    if sweep_file is not None and isinstance(sweep_file.value(), str):  # before Hydra reads (and expands) it
        from core.sweep import no_defaults_list

        no_defaults_list(sweep_file.value())

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for o in parsed:
            group = o.key_or_group
            if group not in GROUPS:
                continue
            options = loader.get_group_options(group)
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            plus = "+" if group in APPENDED else ""
            for v in values:
                if v not in options:  # the nearest name (case and typos), else the first
                    from core.options import nearest_name

                    near = nearest_name(v, options) or options[0]
                    raise UserError(f"unknown {group} '{v}': choose one of {', '.join(options)} "
                                    f"(e.g. {plus}{group}={near})")
            if group in APPENDED and o.input_line.startswith(group):
                raise UserError(f"'{group}' is an appended group: type +{o.input_line}")
        if flagged:  # before any list of values is made: range(128, 10**9, 128) is millions
            check_sweep_size(parsed)
        for o in parsed:
            if o.is_sweep_override() and multirun and not flagged:  # +sweep=NAME: its rows come from its file
                raise UserError(f"'{o.input_line}' lists several values, and +sweep=... takes its rows from "
                                "conf/sweep/: give one value, or sweep with -m and "
                                "lists instead of +sweep")
            if o.is_sweep_override() and not multirun:
                raise UserError(f"'{o.input_line}' lists several values, which is a sweep: add -m (python -m "
                                f"core.bench -m {o.input_line}), or give one value")
            if o.is_sweep_override() and not list(o.sweep_string_iterator()):
                raise UserError(f"'{o.input_line}' sweeps over no value: give at least one")
            if o.is_sweep_override():
                seen: set = set()
                twice = next((v for v in o.sweep_string_iterator() if v in seen or seen.add(v)), None)
                if twice is not None:  # the same row twice in one call (with redo=true, measured twice)
                    raise UserError(f"'{o.input_line}' lists {twice} twice: give each value once (repeats=N measures "
                                    "a row N times)")
        try:
            cfg = compose("bench", overrides=[x for x in overrides
                                              if not OverridesParser.create().parse_override(x).is_sweep_override()])
        except Exception as e:
            msg = first_line(e, with_type=False) or type(e).__name__
            if "Could not append to config. An item is already at" in msg:
                key = msg.split("'")[1] if "'" in msg else "?"
                raise UserError(f"{key} is in the config already, so +{key}= cannot add it: drop the + "
                                f"({key}=...)") from None
            if "Could not override" in msg or "Key '" in msg:
                key = msg.split("'")[1] if "'" in msg else "?"
                scalar_parent(key, overrides)
                group = key.split(".")[0]
                if group in APPENDED and "." in key:  # an option of a plugin not (or not yet) chosen
                    raise UserError(plugin_option_hint(group, key, overrides)) from None
                raise UserError(unknown_key_hint(key, overrides)) from None
            raise UserError(f"bad override: {msg}") from None
    GlobalHydra.instance().clear()
    from core.options import OptionError, validate

    try:  # every option's type and range, before torch is imported
        validate(cfg)
    except OptionError as e:
        raise UserError(str(e)) from None
    if multirun:
        from core.results import ResultsError, check_writable

        swept = next((o for o in parsed if o.key_or_group == "results" and o.is_sweep_override()), None)
        try:  # before Hydra launches the jobs and prints its own lines; every value of a swept results=
            for path in list(swept.sweep_string_iterator()) if swept is not None else [cfg.results]:
                check_writable(path, sweep=True)
        except ResultsError as e:
            raise UserError(str(e)) from None
    if multirun and not flagged:  # +sweep=NAME: the file's own keys are not the rows' options
        own = next((o for o in parsed if o.key_or_group.startswith("sweep.")), None)
        if own is not None:
            raise UserError(f"'{own.input_line}' changes the sweep file itself, not its rows: edit "
                            "conf/sweep/<name>.yaml, or put row options (key=value) after +sweep=<name>")
    if flagged:  # each value a -m sweep lists, checked now: a bad one is refused before any row runs
        check_sweep_values(parsed, overrides)
        check_sweep_rows(parsed, overrides)
    for o in parsed:
        if not multirun and o.key_or_group in SWEEP_ONLY:
            raise UserError(f"{o.key_or_group} applies to sweeps (-m or +sweep=...), not to a single row: leave it "
                            "out, or add -m")
    contradictions(parsed, cfg)
    return cfg


def check_sweep_values(parsed, overrides: list[str]) -> None:
    """Compose and validate the config once per value of each listed option (groups are checked by
    name above): ``seq_len=8192,abc`` is refused with its one line before the first row is measured,
    not after it as a failed row."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from core.options import OptionError, conf_dir, validate

    fixed = [x for x in overrides if not OverridesParser.create().parse_override(x).is_sweep_override()]
    n = sum(sweep_count(o) for o in parsed if o.is_sweep_override() and o.key_or_group not in GROUPS)
    from core.sweep import Ticker  # each value is composed and validated: a line every ten seconds

    ticker, checked = Ticker(n, "values checked"), 0
    for o in parsed:
        if not o.is_sweep_override() or o.key_or_group in GROUPS:
            continue
        key = o.input_line.split("=", 1)[0]
        for v in o.sweep_string_iterator():
            checked += 1
            ticker.tick(checked)
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(str(conf_dir()), version_base="1.3"):
                    cfg = compose("bench", overrides=[*fixed, f"{key}={v}"])
                validate(cfg)
            except OptionError as e:
                raise UserError(f"{o.input_line}: {e}") from None
            except Exception as e:
                raise UserError(f"{o.input_line}: the value {v!r} does not compose ({first_line(e, with_type=False)})") from None
            finally:
                GlobalHydra.instance().clear()


#: sweeps with more rows than this are not resolved up front (their rows still refuse themselves)
MAX_CHECKED_ROWS = 256
#: the most rows one sweep may have (ten thousand rows of the shortest CPU row are hours; a range
#: typed with a missing step is millions)
MAX_SWEEP_ROWS = 10_000


def sweep_count(o) -> int:
    """How many values a swept override lists, without listing them (``range(128, 10**9, 128)``)."""
    from hydra.core.override_parser.types import RangeSweep

    v = o.value()
    if isinstance(v, RangeSweep) and v.step:
        return max(0, math.ceil((v.stop - v.start) / v.step))
    return sum(1 for _ in o.sweep_string_iterator())


def check_sweep_size(parsed) -> None:
    """A ``-m`` sweep of more than :data:`MAX_SWEEP_ROWS` rows is refused before its values are listed."""
    swept = [o for o in parsed if o.is_sweep_override()]
    counts = [(o, sweep_count(o)) for o in swept]
    rows = math.prod(c for _, c in counts)
    if rows > MAX_SWEEP_ROWS:
        big, n = max(counts, key=lambda oc: oc[1])
        raise UserError(f"this sweep has {rows:,} rows, more than the {MAX_SWEEP_ROWS:,} one sweep may have "
                        f"({big.input_line} alone lists {n:,}): list fewer values, or split it")


def check_sweep_rows(parsed, overrides: list[str]) -> None:
    """Resolve every row of the sweep (each combination of its listed values) before the first runs
    (:mod:`core.sweepcheck`, which allocates nothing), so a combination the row itself would refuse
    for its input (``fuse=false`` with an hf model, a backend that cannot run the model's attention)
    is refused now with its one line, not after the rows before it ran. Rows this machine cannot
    run (predicted not to fit, a backend missing here) still run as failed rows."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    lists = [(o.input_line.split("=", 1)[0], list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override()]
    if not lists or math.prod(len(v) for _, v in lists) > MAX_CHECKED_ROWS:
        return
    fixed = [x for x in overrides if not OverridesParser.create().parse_override(x).is_sweep_override()]
    combos = [[f"{k}={v}" for (k, _), v in zip(lists, vals)] for vals in itertools.product(*(v for _, v in lists))]
    from core.sweepcheck import first_refusal

    line = first_refusal(fixed, combos)
    if line:
        raise UserError(line)


#: top-level options outside a row's key (core.results.KEY_FIELDS and the variant): a sweep over one
#: of them makes rows of one key, so every value after the first would be skipped as already done
NOT_IN_KEY = ("steps", "measure_s", "seed", "tag", "max_memory_gib", "max_host_gib", "memory_profile",
              "ops_profile", "ops_trace", "busy_step", "hardware_as_label", "device")


def contradictions(parsed, cfg) -> None:
    """Overrides that each parse and type-check but together say two things (one line each)."""
    chose = {o.key_or_group: o.get_value_element_as_str() for o in parsed
             if not o.is_sweep_override() and o.key_or_group in GROUPS}
    for o in parsed:
        key = o.key_or_group
        if key == "model.family":  # the entry's family with another family's code: another model in disguise
            raise UserError(f"{o.input_line}: a model's family comes with its entry (model={chose.get('model', 'auto')}"
                            "), and another family's code would build another model under its name: pick the model "
                            "instead, e.g. model=qwen3_moe_tiny (python -m core.bench --list)")
        if key in ("redo", "repeats", "row_timeout_s") and o.is_sweep_override() \
                and len(set(o.sweep_string_iterator())) > 1:
            raise UserError(f"{o.input_line}: {key} applies to the whole sweep, so it takes one value: give it one "
                            f"(e.g. {key}={next(iter(o.sweep_string_iterator()))}), or run the sweep once per value")
        if key in NOT_IN_KEY and o.is_sweep_override() and len(list(o.sweep_string_iterator())) > 1 \
                and cfg.get("redo") is not True:
            raise UserError(f"{o.input_line}: {key} is not part of a row's key, so the sweep would measure its first "
                            f"value and skip the others as already in results: add redo=true to measure each"
                            + (" (or repeats=N to repeat a row)" if key == "seed" else ""))
    family = (cfg.get("model") or {}).get("family")
    if cfg.get("fuse") != "lora" and family:
        from core.plugins import PluginError, registry

        try:
            fuses = getattr(registry().get("model_family", str(family)).factory, "fuses_projections", True)
        except PluginError:  # an unknown family is refused where the model is resolved
            fuses = True
        if not fuses:
            raise UserError(f"fuse={str(cfg.get('fuse')).lower()}: fuse= sets how stepbench's native blocks fuse "
                            f"their projections, and the {family} family runs its own modules (it fuses none): "
                            "leave fuse out")
    from core.resolve import _primary_defaults

    default_peer = _primary_defaults()["peer"]["name"]  # another trainer refuses fuse= as stepbench's own
    peer = (cfg.get("peer") or {}).get("name", default_peer) != default_peer
    if cfg.get("fuse") in (True, False) and cfg.get("adapter") and not peer:  # the adapter's own targets, read from the plugin
        from omegaconf import OmegaConf

        from core.plugins import make

        try:
            adapted = getattr(make("adapter", OmegaConf.to_container(cfg.adapter, resolve=True)), "targets", None)
        except Exception:  # a bad adapter option is refused where the adapter is made, with its own line
            adapted = ()
        if cfg.get("fuse") is False and adapted is None:
            raise UserError(f"fuse=false unfuses the adapted layers' projections, and adapter={cfg.adapter.get('name')} "
                            "adds none (fuse=lora, the default, fuses nothing here either): leave fuse out, or fuse "
                            "the plain layers with fuse=true")
        fused = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
        if cfg.get("fuse") is True and adapted and fused <= {str(t).rsplit(".", 1)[-1] for t in adapted}:
            raise UserError(f"fuse=true adds the plain (not adapted) q/k/v and gate/up layers to fuse=lora's, and "
                            f"adapter={cfg.adapter.get('name')} adapts all of them: it is fuse=lora, the default; "
                            "leave fuse out")
    if chose.get("sync") == "filesystem_shm" and any(o.key_or_group == "sync.dir" for o in parsed):
        fs = mount_type(str(cfg.sync.dir))
        if fs is not None and fs not in ("tmpfs", "ramfs"):
            raise UserError(f"+sync=filesystem_shm keeps the weights in shared memory, and sync.dir={cfg.sync.dir} "
                            f"is on a {fs} filesystem: use +sync=filesystem for a folder on disk, or a folder under "
                            "/dev/shm")


#: what a row id may be (it names a folder under sync.dir): a sweep's child gets a uuid's hex
ROW_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_launch(env) -> None:
    """The environment a launcher set (torchrun's WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT; a sweep's STEPBENCH_CHILD_ROW_ID), checked before anything starts (one line)."""
    sizes = {}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        v = env.get(var)
        if v is None:
            continue
        try:
            sizes[var] = int(v)
        except ValueError:
            raise UserError(f"{var}={v!r} is not a whole number (torchrun sets it): launch with torchrun "
                            f"--nproc-per-node=N -m core.bench ..., or unset {var}") from None
    world, rank = sizes.get("WORLD_SIZE", 1), sizes.get("RANK", 0)
    if sizes.get("LOCAL_RANK", 0) < 0:
        raise UserError(f"LOCAL_RANK={sizes['LOCAL_RANK']} is no GPU index (0 or more; torchrun sets it): unset "
                        "LOCAL_RANK")
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"WORLD_SIZE={world} with RANK={rank} is no process group (0 <= RANK < WORLD_SIZE): launch "
                        "with torchrun --nproc-per-node=N -m core.bench ..., or unset WORLD_SIZE and RANK")
    if world > 1 and "TORCHELASTIC_RUN_ID" not in env:  # rank 0 would wait for ranks nobody started
        raise UserError(f"WORLD_SIZE={world} is set but this process was not started by torchrun, so the other "
                        f"ranks would never join and the row would wait forever: launch with torchrun "
                        f"--nproc-per-node={world} -m core.bench ..., or unset WORLD_SIZE")
    if "RANK" in env and "WORLD_SIZE" in env:  # torch's env:// rendezvous reads the two below
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
        if missing:
            raise UserError(f"RANK and WORLD_SIZE are set but {' and '.join(missing)} not, so no process group can "
                            "form: launch with torchrun --nproc-per-node=N -m core.bench ..., or unset WORLD_SIZE and "
                            "RANK for one process")
        port = env["MASTER_PORT"]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"MASTER_PORT={port!r} is not a port (1-65535): let torchrun set it, or unset it")
    child = env.get(CHILD_ENV)
    if child is not None and not ROW_ID.fullmatch(child):
        raise UserError(f"{CHILD_ENV}={child!r} is not a row id (letters, digits, _ and -, at most 64; a sweep sets "
                        f"it for the rows it runs): unset {CHILD_ENV}")
    if child is not None:  # a row id a sweep gave its child; one typed by hand would be reused by every row
        from core.sweep import CHILD_OF_ENV, started_by

        parent = env.get(CHILD_OF_ENV, "")
        if not (parent.isdigit() and started_by(int(parent))):
            raise UserError(f"{CHILD_ENV} is set, and a sweep sets it only for the rows it starts (this row was not "
                            f"started by one): unset {CHILD_ENV} {CHILD_OF_ENV}")
    run = env.get("STEPBENCH_RUN_ID")  # stored in every row: what names the call rows are compared within
    if run and not ROW_ID.fullmatch(run):  # empty: unset (a new id is made)
        raise UserError(f"STEPBENCH_RUN_ID={run!r} is not a run id (letters, digits, _ and -, at most 64): e.g. "
                        "STEPBENCH_RUN_ID=call7, or unset it")
    commit = env.get("STEPBENCH_GIT_COMMIT")  # the commit a copy without .git runs (stored in every row)
    if commit and not re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", commit):
        raise UserError(f"STEPBENCH_GIT_COMMIT={commit!r} is not a commit (7 to 40 lowercase hex digits, as git "
                        "rev-parse HEAD prints them): set it so, or unset it where .git is present")
    dirty = env.get("STEPBENCH_GIT_DIRTY") or None  # empty: unset, as STEPBENCH_RUN_ID
    if dirty and dirty not in ("0", "1"):
        raise UserError(f"STEPBENCH_GIT_DIRTY={dirty!r} is not 0 or 1 (whether the copy has uncommitted changes): set "
                        "STEPBENCH_GIT_DIRTY=0 or 1")
    if commit and dirty == "0" and commit.endswith("-dirty"):
        raise UserError(f"STEPBENCH_GIT_COMMIT={commit!r} says the copy had changes and STEPBENCH_GIT_DIRTY=0 says it "
                        "had none: drop -dirty, or set STEPBENCH_GIT_DIRTY=1")
    if dirty is not None and not commit:
        raise UserError("STEPBENCH_GIT_DIRTY is read only with STEPBENCH_GIT_COMMIT (the commit a copy without .git "
                        "ran): set both, or unset STEPBENCH_GIT_DIRTY and let git say")
    cache = env.get("TORCHINDUCTOR_CACHE_DIR", "")
    if cache.strip():  # inductor writes its kernels there on the first compile, mid-row
        import tempfile

        try:
            os.makedirs(os.path.expanduser(cache), exist_ok=True)
            with tempfile.TemporaryFile(dir=os.path.expanduser(cache)):
                pass
        except OSError as e:
            raise UserError(f"TORCHINDUCTOR_CACHE_DIR={cache} cannot take inductor's files ({e.strerror or e}): point "
                            "it at a folder you can write, or unset it") from None
    logs = env.get("TORCH_LOGS", "")
    if logs.strip():  # torch parses it as it is imported, and a bad one fails that import
        try:
            import torch  # noqa: F401
        except ValueError:
            raise UserError(f"TORCH_LOGS={logs!r} is not a setting torch takes (a comma-separated list of log and "
                            "artifact names, e.g. TORCH_LOGS=recompiles; TORCH_LOGS=help lists them): fix it, or "
                            "unset TORCH_LOGS") from None
    from core.paths import autoload_disabled

    try:  # the plugin switch, before anything reads it
        autoload_disabled()
    except ValueError as e:
        raise UserError(str(e)) from None


#: Hydra's flags that print the composed config instead of running: flag -> the values it takes
INFO_FLAGS = {"--cfg": ("job", "hydra", "all"), "-c": ("job", "hydra", "all"),
              "--info": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
              "-i": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")}


def without_info_flags(argv: list[str]) -> list[str]:
    """``argv`` without Hydra's --cfg/--info flags and their values (checked here, one line), so the
    overrides they print are checked like a row's."""
    out, i = [], 0
    modes = [a for a in argv if a in ("-m", "--multirun", "--cfg", "-c", "--info")]
    if len({{"--multirun": "-m", "-c": "--cfg"}.get(m, m) for m in modes}) > 1:
        raise UserError(f"{modes[0]} and {modes[1]} do not go together (Hydra takes one of -m, --cfg and --info): "
                        "--cfg job prints one row's config, e.g. python -m core.bench model=qwen3_4b --cfg job")
    while i < len(argv):
        a = argv[i]
        if a.split("=", 1)[0] in ("-p", "--package", "-sc", "--shell-completion"):
            raise UserError(f"{a.split('=', 1)[0]} is Hydra's, and stepbench does not take it: --cfg job prints the whole "
                            "config (e.g. python -m core.bench model=qwen3_4b --cfg job)")
        if a == "--resolve":
            if not any(x in ("--cfg", "-c") for x in argv):
                raise UserError("--resolve goes with --cfg: e.g. python -m core.bench model=qwen3_4b --cfg job --resolve")
            i += 1
            continue
        if a not in INFO_FLAGS:
            out.append(a)
            i += 1
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        takes = INFO_FLAGS[a]
        if nxt in takes:
            i += 2
        elif a in ("--cfg", "-c") or (nxt is not None and not nxt.startswith("-")):
            raise UserError(f"{a} takes one of {', '.join(takes)}" + (f", not {nxt!r}" if nxt else "")
                            + f": e.g. python -m core.bench model=qwen3_4b {a} {takes[0] if a in ('--cfg', '-c') else 'config'}")
        else:
            i += 1
    return out


def check_workdir() -> None:
    """Hydra writes each run's config under ``runs/hydra/`` in the current folder: one that takes no
    file is one line now, not Hydra's traceback."""
    import tempfile
    from pathlib import Path

    base = Path("runs") if Path("runs").is_dir() else Path(".")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".stepbench-probe-"):
            pass
    except OSError as e:
        raise UserError(f"this folder ({Path.cwd()}) takes no new file ({e.strerror or e}), and each run writes its "
                        "config under runs/hydra/ here: run from a folder you can write") from None


def mount_type(path: str) -> str | None:
    """The filesystem type (``tmpfs``, ``ext4``, ...) of the mount that holds ``path`` (the longest
    mount point above it, in /proc/mounts); None where /proc/mounts cannot be read."""
    import os

    try:
        mounts = [line.split()[1:3] for line in open("/proc/mounts", encoding="utf-8", errors="replace")]
    except OSError:
        return None
    real = os.path.realpath(os.path.expanduser(path))
    best, kind = "", None
    for point, fs in mounts:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fs
    return kind


#: options that only a sweep reads (a single row would ignore them)
SWEEP_ONLY = ("redo", "repeats", "row_timeout_s")


def unknown_key_hint(key: str, overrides: list[str]) -> str:
    """The error for an option no config has: the nearest top-level option, or for ``group.opt``
    which of the group's configs has ``opt`` and what to type."""
    from omegaconf import OmegaConf

    from core.options import OPTIONS, PLUGIN_GROUPS, _nearest, conf_dir

    if "." not in key:
        return (f"unknown option '{key}'{_nearest(key, [*OPTIONS, *PLUGIN_GROUPS])}: python -m core.bench --list "
                "shows the options")
    group, opt = key.split(".", 1)[0], key.split(".", 1)[1].split(".")[0]
    if group not in PLUGIN_GROUPS:
        return f"unknown option '{key}': '{group}' is not a group (python -m core.bench --list shows them)"
    nodes = {f.stem: OmegaConf.load(f) or {} for f in sorted((conf_dir() / group).glob("*.yaml"))}
    have = [name for name, node in nodes.items() if opt in node]
    keys = sorted({k for node in nodes.values() for k in node})
    chosen = next((x.split("=", 1)[1] for x in overrides if x.lstrip("+").startswith(f"{group}=")), None)
    which = f"{group}={chosen}" if chosen else f"the default {group}"
    if not have:
        return f"unknown option '{key}'{_nearest(opt, keys)}: no {group} config has it"
    return f"{which} has no option '{opt}': {', '.join(have[:4])} {'have' if len(have) > 1 else 'has'} it: type " \
           f"{group}={have[0]} {key}=..."


def scalar_parent(key: str, overrides: list[str]) -> None:
    """Raise the one line for ``a.b.c=...`` where ``a.b`` is a value, not a group of options (Hydra
    says only that it cannot override ``a.b.c``)."""
    from hydra import compose
    from omegaconf import DictConfig

    rest = [x for x in overrides if x.lstrip("+~").split("=", 1)[0] != key]
    try:
        node = compose("bench", overrides=rest)
    except Exception:  # another override is wrong too: the caller's line names this one
        return
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.get(part) if isinstance(node, DictConfig) else None
        if node is None:
            return
        if not isinstance(node, DictConfig):
            prefix = ".".join(parts[:i + 1])
            raise UserError(f"{key}: {prefix} is a value ({node}), not a group of options: set it whole, e.g. "
                            f"{prefix}={node}")


def plugin_option_hint(group: str, key: str, overrides: list[str]) -> str:
    """The error for ``group.opt=...`` where the chosen (or default) plugin of an appended group
    lacks ``opt``: which plugins have it, and what to type."""
    from omegaconf import OmegaConf

    from core.options import conf_dir

    opt = key.split(".", 1)[1].split(".")[0]
    chosen = next((x.split("=", 1)[1] for x in overrides if x.startswith(f"+{group}=")), None)
    have = sorted(f.stem for f in (conf_dir() / group).glob("*.yaml") if opt in (OmegaConf.load(f) or {}))
    if chosen and "," in chosen and have:  # a sweep over plugins, some without the option
        lacking = [n for n in chosen.split(",") if n not in have]
        if not lacking:  # Hydra composes a -m sweep once with the group's default, which lacks it
            return (f"{key}: every {group} plugin this sweep lists has it, but Hydra composes a -m sweep once with the "
                    f"default {group}, which has not: run one -m per plugin (+{group}={chosen.split(',')[0]} {key}=...), "
                    f"or write the rows in a +sweep= file (conf/sweep/), each with its +{group}= and {key}=")
        return (f"{key} is an option of {', '.join(have)}, not of {', '.join(lacking)}: sweep only plugins that have it "
                f"(-m +{group}={','.join(n for n in chosen.split(',') if n in have) or have[0]} {key}=...), or leave "
                f"{key} out")
    which = f"the {group} plugin '{chosen}'" if chosen else f"the default {group}"
    if not have:
        return f"unknown option '{key}': no {group} plugin has it (python -m core.bench --list shows each one's options)"
    return f"{which} has no option '{opt}': it is an option of {', '.join(have)}: type +{group}={have[0]} {key}=..."


def main() -> None:
    from core.errors import BROKEN_PIPE_STATUS, drop_stdout, guard_stdout

    guard_stdout()
    try:
        _main()
        sys.stdout.flush()  # what is still buffered fails here, inside the handlers below, not at exit
    except KeyboardInterrupt:  # before the row started (reading configs): nothing written
        ignore_further_ctrl_c()
        words, status = stopped()
        say(f"{words}: nothing was measured")
        sys.exit(status)
    except StdoutError as e:  # --list into a full disk (a row's own line says where its row is)
        drop_stdout()
        say(f"standard output cannot be written ({e.strerror}): send it elsewhere (> FILE)")
        sys.exit(1)
    except BrokenPipeError:  # --list | head: its reader has gone
        drop_stdout()
        sys.exit(BROKEN_PIPE_STATUS)


def _main() -> None:
    # fewer reserved-but-unused bytes (the peak-memory column is max_memory_reserved)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import hydra

    argv = sys.argv[1:]
    if "--list" in argv and len(argv) > 1:
        say(f"--list takes nothing else (got {' '.join(a for a in argv if a != '--list') or '--list twice'}): type python -m "
            "core.bench --list")
        sys.exit(2)
    if "--list" in argv:
        try:
            list_plugins()
        except (StdoutError, BrokenPipeError):
            raise
        except Exception as e:  # duplicate names, a registration hook that raises
            say(first_line(e) if not hasattr(e, "args") or not e.args else str(e.args[0]))
            sys.exit(2)
        return
    if not any(a in ("--help", "-h", "--hydra-help") for a in argv):
        try:
            check_launch(os.environ)
            check_overrides(without_info_flags(argv))
            check_workdir()
        except UserError as e:
            say(str(e))
            sys.exit(2)
        except Exception as e:  # Hydra's own composition errors, reduced to one line
            say(f"bad override: {first_line(e)}")
            sys.exit(2)
    from core.options import conf_dir

    flags = [a for a in argv if a in ("-m", "--multirun")]
    sys.argv = [sys.argv[0], *flags, *[a for a in argv if a not in flags]]  # Hydra takes -m first only
    shown = any(a in ("-c", "--cfg", "--info") for a in argv)  # Hydra prints the config and exits
    try:
        if shown:  # printed by stepbench after Hydra, so a stdout that cannot take it is one line, not Hydra's traceback
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()) as text:
                hydra.main(config_path=str(conf_dir()), config_name="bench", version_base="1.3")(_hydra_task)()
            sys.stdout.write(text.getvalue())
            sys.stdout.flush()
        else:
            hydra.main(config_path=str(conf_dir()), config_name="bench", version_base="1.3")(_hydra_task)()
    except KeyboardInterrupt:  # rows that finished are written; the one in flight is not
        ignore_further_ctrl_c()
        words, status = stopped()
        say(f"{words}: rows that finished are in the results; run the same command to resume")
        sys.exit(status)
    from core.sweep import PROGRESS

    if PROGRESS.failed:  # a sweep goes on past a failed row, then says so in its exit status
        say(f"{PROGRESS.failed} row{'s' if PROGRESS.failed > 1 else ''} of the sweep failed (each is in the results "
            "with its error): exit status 1")
        sys.exit(1)


if __name__ == "__main__":
    main()
