"""From a composed config to what a row runs: plugins, model, hardware and the row's labels.

Everything here is checked before anything is allocated: option types and ranges
(:mod:`core.options`), plugin names and whether each can run here, the plugins' own options (their
factories), the hardware profile against the device, and the predicted GPU and host memory and
weight-sync bytes (the plugins' declarations, :mod:`core.memory`) against what is available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

# UserError and first_line are this module's interface too
from core.errors import NotHereError, UserError, first_line  # noqa: F401
from core.options import OptionError, validate


@dataclass
class Resolved:
    """A row ready to build: its context, model shapes, plugin objects and predictions."""

    ctx: object  #: core.contracts.RunContext
    args: object  #: ModelArgs
    family: str
    family_obj: object  #: core.contracts.ModelFamily
    flavour: str
    seq_len: int
    attention: object
    ac: object
    adapter: object
    sync: object
    entries: dict  #: kind -> core.plugins.Entry (provider, doc)
    hw: dict
    sync_ctx: object  #: core.contracts.SyncContext
    layout: object  #: core.memory.Layout
    predicted_gib: float = 0.0
    host_gib: float = 0.0
    notes: list = field(default_factory=list)
    kernels: object = None  #: core.contracts.Kernels
    peer: object = None  #: core.contracts.Peer (None: stepbench measures the row itself)
    compile_given: bool = False  #: compile= was set (not ``auto``): a peer, which compiles as it does, refuses it


#: top-level options outside the other key fields that change what a row measures
VARIANT_OPTIONS = ("compile_head", "fuse", "head_budget_mib", "fsdp")
#: plugin options the other key fields already say (ac.mode in the AC column, sync.dir and
#: sync.overlap in the Sync column) or that change nothing measured
VARIANT_SKIP = {"ac": {"mode"}, "sync": {"dir", "overlap", "cleanup"}}


@lru_cache(maxsize=None)
def _peer_measured(name: str) -> tuple:
    """A peer's ``measured_options`` (none where it cannot be made here)."""
    try:
        from core.plugins import registry

        return tuple(getattr(registry().get("peer", name).factory({"name": name}, None), "measured_options", ()))
    except Exception:
        return ()


@lru_cache(maxsize=1)
def _primary_defaults() -> dict:
    from omegaconf import OmegaConf

    from core.options import conf_dir

    return OmegaConf.to_container(OmegaConf.load(conf_dir() / "bench.yaml"), resolve=False)


def variant_label(cfg) -> str:
    """Every option that changes what is measured and is not in the other key fields, where it
    differs from its default (``fuse=false``, ``ac.inside=false``, ``sync.writer=write``, ...), as
    ``k=v`` words in order; "" for a row at its defaults. Rows that differ in it are different rows.
    ``cfg``: the composed config, or a row's stored ``config`` (a dict)."""
    from omegaconf import DictConfig, OmegaConf

    from core.options import group_schema

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    defaults = _primary_defaults()

    def word(k, v):
        return f"{k}={str(v).lower() if isinstance(v, bool) else v}"

    words = [word(k, cfg[k]) for k in VARIANT_OPTIONS if k in cfg and cfg[k] != defaults.get(k)]
    default = defaults["kernels"]["name"]  # rows from before the kernels kind ran PyTorch ops: the default
    kernels = (cfg.get("kernels") or {}).get("name", default) if isinstance(cfg.get("kernels"), dict) else default
    if kernels != default:
        words.append(word("kernels", kernels))
    for group in ("adapter", "attn", "ac", "sync", "kernels", "peer"):
        node = cfg.get(group)
        if not isinstance(node, dict):
            continue
        schema = group_schema(group, node.get("name"))
        skip = VARIANT_SKIP.get(group, ())
        if group == "peer":  # a peer says which of its options change what it measures
            skip = set(node) - set(_peer_measured(str(node.get("name"))))
        for k in sorted(node):
            if k != "name" and k not in skip and node[k] != schema.get(k):
                words.append(word(f"{group}.{k}", node[k]))
    return " ".join(words)


def model_choice(cfg, device: str) -> tuple[str, str, int, list[str]]:
    """(family, flavour, seq_len, notes) of the row: the model config's own, or where it names one
    model per device (``by_device``, the default ``model=auto``) the one for ``device``."""
    node, seq_len = cfg.model, cfg.seq_len
    pick = node.get("by_device")
    if not pick:
        return node.family, str(node.flavour), seq_len, []
    fix = ("pick a model with model=... (python -m core.bench --list), or leave model.by_device as "
           "conf/model/auto.yaml has it")
    if not hasattr(pick, "get") or not all(hasattr(pick.get(d), "get") for d in ("cuda", "cpu")):
        raise UserError(f"model.by_device must map cuda and cpu to a family and flavour (got {pick!r}): {fix}")
    choice = pick.get(device) or pick.get("cpu")
    for k in ("family", "flavour"):
        if not choice.get(k) or not isinstance(choice.get(k), (str, int, float)):
            raise UserError(f"model.by_device.{device}.{k} is missing or not a name (got {choice.get(k)!r}): {fix}")
    cap = choice.get("max_seq_len")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 128 or cap % 128):
        raise UserError(f"model.by_device.{device}.max_seq_len must be a whole number of tokens, a multiple of 128 "
                        f"(as seq_len; got {cap!r}): try model.by_device.{device}.max_seq_len=512")
    notes = []
    if cap and seq_len > cap:
        notes.append(f"seq_len={seq_len} is above this machine's {cap} for the default model: running at {cap} "
                     f"(model.by_device.{device}.max_seq_len; pick a model with model=... to run {seq_len})")
        seq_len = cap
    if device != "cuda":
        notes.append(f"no CUDA GPU: running {choice['family']} {choice['flavour']} on the CPU at seq_len={seq_len} "
                     f"(on a GPU machine the default is {pick['cuda']['family']} {pick['cuda']['flavour']}; "
                     "pick one with model=...)")
    return choice["family"], str(choice["flavour"]), seq_len, notes


def _model_args(cfg, fam, family: str, flavour: str):
    from omegaconf import OmegaConf

    if fam.from_config is not None:  # shapes from a config (model.config=...), not a named flavour
        try:
            return fam.from_config(OmegaConf.to_container(cfg, resolve=True))
        except ValueError as e:  # the family says what to type instead
            raise UserError(first_line(e, with_type=False)) from None
        except Exception as e:  # a family's check that breaks: one line naming it, never a traceback
            raise UserError(f"model family '{family}' could not read its config ({first_line(e)}): check "
                            "model.config, or pick another model with model=...") from None
    if flavour not in fam.flavours:
        raise UserError(f"model family '{family}' has no flavour '{flavour}': choose one of {', '.join(fam.flavours)}")
    return fam.flavours[flavour]


def max_positions(args, fam) -> int | None:
    """The model's ``max_position_embeddings`` (from its transformers config), where it states one."""
    conf = getattr(args, "hf_config", None)
    if conf is None and callable(getattr(fam, "hf_config", None)):
        try:
            conf = fam.hf_config(args)
        except Exception:  # a family's own config function: a note is not worth a failed row
            conf = None
    v = (conf or {}).get("max_position_embeddings") if isinstance(conf, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def refuse_unfit(args, attention, adapter, ac, ctx, installed: bool = True) -> None:
    """``UserError`` where the row's plugins cannot run this model: the adapter's ``supports``, the
    attention backend's ``supports`` (with ``installed``: it may read what is installed here, so
    ``core.predict`` leaves it out), the attention features the model needs, and the AC strategy's
    optional ``why_not`` (e.g. options that do nothing for this model)."""
    why = adapter.supports(args) if hasattr(adapter, "supports") else None
    if why:
        raise UserError(f"adapter '{adapter.name}': {why}")
    why = (attention.supports(args) if installed else None) or missing_features(attention, args, ctx)
    if why:
        raise UserError(f"attn '{attention.name}' cannot run {args.name}: {why}")
    why = ac.why_not(args) if hasattr(ac, "why_not") else None
    if why:
        raise UserError(f"+ac={ac.name} on {args.name}: {why}")


def missing_features(attention, args, ctx) -> str | None:
    """Why ``attention`` cannot honour what the model's attention needs (sliding windows, another
    scale, soft-capping, sinks: ``args.attn_features``), naming the backends here that can; None when
    it can."""
    from core.contracts import ATTN_FEATURES
    from core.plugins import registry

    need = set(args.attn_features or ()) - set(getattr(attention, "features", ()) or ())
    if not need:
        return None
    able = []
    for name in registry().names("attn"):
        e = registry().get("attn", name)
        try:
            if e.unavailable(ctx) is None and set(args.attn_features) <= set(e.factory({"name": name}, ctx).features):
                able.append(name)
        except Exception:  # a backend that cannot even be made here does not run it
            continue
    what = "; ".join(ATTN_FEATURES[f].split(" (")[0] for f in sorted(need))
    instead = f"use {' or '.join('+attn=' + n for n in able)}" if able else "no backend registered here runs it"
    return f"its attention needs {what}, which {attention.name} does not do: {instead}"


def make_plugins(cfg, ctx) -> dict:
    """The registry entries and plugin objects of a composed config's attn, ac, adapter and sync
    (each made from its options: cheap, nothing allocated); ``UserError`` for an unknown name or
    bad options."""
    from omegaconf import OmegaConf

    from core.plugins import PluginError, registry

    out: dict = {"entries": {}}
    try:
        reg = registry()
        for kind in ("attn", "ac", "adapter", "sync", "kernels", "peer"):
            if kind == "peer" and cfg.get("peer") is None:  # a stored config from before peers
                continue
            options = OmegaConf.to_container(cfg[kind], resolve=True)
            entry = reg.get(kind, options["name"])
            out["entries"][kind] = entry
            out[kind] = entry.make(options, ctx)
    except PluginError as e:
        raise UserError(str(e)) from None
    except ValueError as e:  # a plugin that rejects its options says what to type instead
        raise UserError(str(e)) from None
    return out


def _check_available(entries: dict, ctx) -> None:
    for e in entries.values():
        try:
            why = e.unavailable(ctx)
        except Exception as err:  # a plugin's own check that breaks names the plugin
            raise UserError(f"{e.kind} '{e.name}' ({e.provider}) failed its availability check: "
                            f"{first_line(err)}") from None
        if why:
            raise NotHereError(f"{e.kind} '{e.name}' cannot run here: {why}")


def _hardware(cfg, ctx) -> dict:
    from core import hardware

    try:
        hw = hardware.resolve(dict(cfg.hardware), ctx.gpu_name)
    except ValueError as e:
        raise UserError(str(e)) from None
    detected = hardware.profile_for(ctx.gpu_name) if ctx.device == "cuda" or ctx.gpu_name is None else None
    chosen = cfg.hardware.get("name")
    extra = sorted(k for k in cfg.hardware if k != "name")
    if chosen == "auto" and extra:  # auto loads the detected profile as it is: the numbers would be dropped
        raise UserError(f"hardware.{extra[0]} changes a named profile's number, and hardware=auto takes the detected "
                        "profile as it is: name the profile (e.g. hardware=h100 hardware."
                        f"{extra[0]}=...), or leave hardware.{extra[0]} out")
    if cfg.get("hardware_as_label", False) and chosen == "auto":
        raise UserError("hardware_as_label=true takes hardware=<name> as the row's label: add hardware=h100 (or "
                        "another profile), or leave hardware_as_label out")
    if str(chosen).lower() not in ("auto", "cpu") and ctx.device != "cuda":  # the CPU profile's name is "CPU"  # a CPU row is labelled CPU: an H100's name on it would lie
        raise UserError(f"hardware={str(chosen).lower()} names a GPU profile, and this row runs on the CPU (its row "
                        "says CPU): leave hardware= out" + (" and hardware_as_label out" if cfg.get("hardware_as_label")
                                                            else "") + " (python -m core.predict takes hardware=)")
    if chosen != "auto" and detected and hardware.load(detected)["name"] != chosen \
            and not cfg.get("hardware_as_label", False):
        raise UserError(f"hardware={str(chosen).lower()} does not match this machine ({ctx.gpu_name or 'CPU'}): "
                        "use hardware=auto, or add hardware_as_label=true to take it as a label")
    return hw


def resolve(cfg, world: int = 1) -> Resolved:
    """Check a composed config and resolve it to plugins, model args and hardware. Allocates nothing."""
    try:
        validate(cfg)  # before torch is imported: bad values fail fast
    except OptionError as e:
        raise UserError(str(e)) from None
    import torch
    from omegaconf import OmegaConf

    from core.contracts import RunContext, SyncContext
    from core.memory import host_available_gib, layout_of, predict_host_gib, predict_peak_gib
    from core.plugins import PluginError, registry

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise NotHereError("device=cuda but no CUDA GPU is visible: use device=cpu (or device=auto)")
    ctx = RunContext.detect(world) if cfg.device != "cpu" else RunContext("cpu", world_size=world)
    compile_given = cfg.compile != "auto"
    if not compile_given:  # the row records what ran: compiled on a GPU, eager on a CPU
        cfg.compile = ctx.device == "cuda"
    family, flavour, seq_len, notes = model_choice(cfg, ctx.device)
    try:
        fam = registry().get("model_family", family).factory
    except PluginError as e:
        raise UserError(str(e)) from None
    if fam.from_config is None and cfg.model.get("config") not in (None, ""):
        raise UserError(f"model.config is read by the families built from a config (model=hf); the {family} family "
                        f"has named flavours: use model=hf model.config=..., or leave model.config out")
    args = _model_args(cfg, fam, family, flavour)
    flavour = args.name if fam.from_config is not None else flavour
    limit = max_positions(args, fam)
    if limit and seq_len > limit:  # not refused: the published 65536 rows run Qwen3 past its 40960 too
        notes.append(f"seq_len={seq_len} is above {args.name}'s max_position_embeddings ({limit}): RoPE runs past "
                     "the positions the model was trained on, as the published long rows did (speed and memory "
                     "are what they measure)")
    if cfg.task.name not in ("rl", "sft"):
        raise UserError(f"task '{cfg.task.name}' is unknown: use task=rl or task=sft")
    if fam.own_loop(args):  # transformers' plain loop: its own checkpointing and full-logits head
        if (cfg.get("ac") or {}).get("inside") is False:
            raise UserError("ac.inside=false sets where stepbench checkpoints a block, and the plain loop checkpoints "
                            "with transformers' own: leave ac.inside out (or model.plain=false)")
        if cfg.get("head_budget_mib") != _primary_defaults().get("head_budget_mib"):
            raise UserError("head_budget_mib sizes stepbench's chunked log-prob head, and the plain loop computes full "
                            "logits: leave head_budget_mib out (or model.plain=false)")
    hw = _hardware(cfg, ctx)
    if ctx.device != "cuda":  # the profilers read CUDA's allocator and kernels: on a CPU they would do nothing
        for opt in ("memory_profile", "ops_profile", "ops_trace"):
            if cfg.get(opt):
                raise UserError(f"{opt} needs a CUDA GPU (it profiles the GPU's memory or kernels): leave it out on "
                                "the CPU")
        if cfg.get("busy_step") is False:
            raise UserError("busy_step=false switches off the GPU's busy step, and this row runs on the CPU, which "
                            "has none: leave busy_step out")
    if cfg.compile is False and cfg.get("compile_head") is False:  # compile=auto on the CPU: nothing compiles
        raise UserError("compile_head=false switches off compiling the log-prob head, and this row compiles nothing "
                        f"(compile={'auto, eager on the CPU' if not compile_given else 'false'}): leave compile_head out")
    pack = cfg.get("packing")
    if isinstance(pack, str) and pack.startswith("fixed:") and int(pack[6:]) >= seq_len:  # seq_len the model chose
        raise UserError(f"packing={pack}: documents of {pack[6:]} tokens fill no more than one of the row's "
                        f"{seq_len} tokens: use packing=single, or N below {seq_len} (e.g. packing=fixed:{max(2, seq_len // 4)})")
    ctx = RunContext(ctx.device, ctx.gpu_name, ctx.capability, world, hardware=hw)
    p = make_plugins(cfg, ctx)
    _check_available(p["entries"], ctx)
    if world == 1 and cfg.get("sync") and "gather_mib" in cfg.sync:  # how several ranks gather their shards
        from core.options import group_schema

        default = group_schema("sync", cfg.sync.name).get("gather_mib")
        if default is not None and cfg.sync.gather_mib != default:
            raise UserError(f"sync.gather_mib={cfg.sync.gather_mib} sets how several ranks gather their shards, and this "
                            "row runs one process: leave sync.gather_mib out (or run under torchrun)")
    attention, ac, adapter, sync = p["attn"], p["ac"], p["adapter"], p["sync"]
    if not getattr(p["kernels"], "torch_ops", False) and not fam.takes_kernels:
        default = _primary_defaults()["kernels"]["name"]
        raise UserError(f"kernels '{p['kernels'].name}': the {family} family runs its own modules, which take no "
                        f"kernels provider: use +kernels={default} (or a native model, e.g. model=qwen3_0_6b)")
    if adapter.replicate is True and not adapter.replicable:
        raise UserError(f"adapter.replicate=true: the {adapter.name} adapter's weights cannot be replicated "
                        "(FSDP2 must hold them): use adapter.replicate=auto")
    if adapter.replicate is True and not fam.casts_adapters:
        raise UserError(f"adapter.replicate=true needs a model whose layers compute the adapter in bf16 (the "
                        f"native families); {family} models would run it in fp32: use adapter.replicate=auto")
    if adapter.replicate is True and world == 1:  # auto replicates there already: the same row under two keys
        raise UserError("adapter.replicate=true is what adapter.replicate=auto does in one process: leave it out (it "
                        "applies to rows under torchrun)")
    refuse_unfit(args, attention, adapter, ac, ctx)
    config = OmegaConf.to_container(cfg, resolve=True)
    layout = layout_of(config, ac, adapter, fam)
    layout = type(layout)(**{**layout.as_dict(), "kv_repeated": bool(attention.repeats_kv)})
    peer = p.get("peer")
    peer = None if peer is None or peer.runs_stepbench else peer
    host = predict_host_gib(args, seq_len, ac, layout.kv_repeated)
    host_avail = host_available_gib()
    if cfg.get("max_host_gib") is not None and not host and peer is None:
        raise UserError(f"max_host_gib caps the host memory an activation strategy pins, and {ac.label} pins none: "
                        "leave max_host_gib out (or use it with an offload strategy, e.g. +ac=offload)")
    limit = cfg.get("max_host_gib") or host_avail
    if host and limit and host > limit and peer is None:  # a peer's memory is its own
        raise NotHereError(f"{ac.label} would pin {host:.3g} GiB of host memory but {limit:.3g} GiB is available: "
                           "try a shorter seq_len, or an activation strategy that pins less (python -m core.bench --list)")
    if peer is not None and world > 1:
        raise UserError(f"+peer={peer.name} runs the peer on one GPU: run it without torchrun")
    pred = predict_peak_gib(args, seq_len, adapter, ac, world, cfg.head_budget_mib, layout)
    mem_limit = cfg.get("max_memory_gib") or (hw["memory_gib"] if ctx.device == "cuda" else host_avail)
    if mem_limit and pred > mem_limit and peer is None:  # a peer's memory is its own (it may run out: a failed row)
        # on a CPU the activations are in host memory already: moving them there saves nothing
        lean = (ac.leaner if ctx.device == "cuda" else None) or "a shorter seq_len"
        raise NotHereError(f"predicted peak memory {pred:.1f} GiB exceeds the {mem_limit:.1f} GiB available "
                           f"({'GPU' if ctx.device == 'cuda' else 'host'}): try {lean}, another adapter, "
                           f"{'more GPUs, ' if ctx.device == 'cuda' else ''}or max_memory_gib=<GiB> to run it anyway")
    sync_ctx = SyncContext(rank=0, world_size=world, device=ctx.device, adapter_only=adapter.frozen_base,
                           predicted_bytes=2 * adapter.handoff_params(args), task=cfg.task.name,
                           handoff=adapter.handoff)
    try:
        why = sync.check(sync_ctx)
    except ValueError as e:
        raise UserError(str(e)) from None
    if why:
        raise UserError(f"sync '{sync.name}': {why}")
    return Resolved(ctx, args, family, fam, flavour, seq_len, attention, ac, adapter, sync, p["entries"], hw,
                    sync_ctx, layout, pred, host, notes, kernels=p["kernels"], peer=peer,
                    compile_given=compile_given)


def config_labels(cfg) -> dict:
    """The AC, Attn, Type and Sync texts of a row refused before it resolved: its plugins' labels
    where they can be made from its options, else the names it asked for."""
    from omegaconf import OmegaConf

    from core.contracts import RunContext
    from core.plugins import make

    out = {}
    for kind, key in (("ac", "ac"), ("attn", "attn"), ("adapter", "adapter"), ("sync", "sync")):
        try:
            options = OmegaConf.to_container(cfg[kind], resolve=True)
        except Exception:  # a group missing from the config
            out[key] = "?"
            continue
        try:
            out[key] = make(kind, options, RunContext()).label
        except Exception:  # an unknown plugin or bad options: the name asked for
            out[key] = str(options.get("name", "?"))
    return out


def row_labels(cfg, r: Resolved | None, world: int) -> dict:
    """The row's key fields (model, type, seq_len, AC, attention, hardware, and every option that
    changes what is measured). ``r`` may be None for a row refused before it resolved."""
    from omegaconf import OmegaConf
    task = str(cfg.task.name).upper()
    if r is not None:
        labels = {"ac": r.ac.label, "attn": r.attention.label, "adapter": r.adapter.label, "sync": r.sync.label}
        model, hf, family, flavour, seq = r.args.name, r.args.hf_name, r.family, r.flavour, r.seq_len
        hw_label, impl, own_loop = r.hw["label"], r.family_obj.implementation(r.args), r.family_obj.own_loop(r.args)
        if r.peer is not None:  # another trainer measures the row: its rows never stand for stepbench's
            model, impl, own_loop = f"{model} ({r.peer.label})", r.peer.label, True
    else:
        labels = config_labels(cfg)
        model, hf, family, flavour = str(cfg.model.get("family")), "", cfg.model.get("family"), cfg.model.get("flavour")
        seq, hw_label = cfg.get("seq_len"), str(cfg.hardware.get("label", cfg.hardware.get("name")))
        impl = own_loop = None  # unknown: the family did not resolve
        peer = (cfg.get("peer") or {}).get("name") if hasattr(cfg, "get") else None
        if peer and peer != _primary_defaults()["peer"]["name"]:  # a peer's row, refused: still the peer's
            try:
                from core.plugins import make

                label = make("peer", OmegaConf.to_container(cfg.peer, resolve=True)).label
            except Exception:  # an unknown peer or bad options: the name asked for
                label = str(peer)
            model, impl, own_loop = f"{model} ({label})", label, True
    return {
        "model": model, "hf_name": hf, "family": family, "flavour": flavour, "impl": impl, "own_loop": own_loop,
        "task": task, "adapter": labels["adapter"], "type": f"{task} {labels['adapter']}",
        "seq_len": seq, "ac": labels["ac"], "attn": labels["attn"], "hardware": hw_label, "num_gpus": world,
        "hardware_label": f"{world}x{hw_label}", "micro_batches": cfg.get("micro_batches"),
        "packing": cfg.get("packing"), "compile": cfg.get("compile"), "sync": labels["sync"],
        "variant": variant_label(cfg),
        **({"peer": {"name": r.peer.name, "label": r.peer.label}} if r is not None and r.peer is not None else {}),
        "kernels": (r.kernels.label if r is not None and r.kernels is not None
                    else str((cfg.get("kernels") or {}).get("name", _primary_defaults()["kernels"]["name"]))),
    }
