"""From a composed config to what a row runs: plugins, model, hardware and the row's labels.

Everything here is checked before anything is allocated: option types and ranges
(:mod:`core.options`), plugin names and whether each can run here, the hardware profile against
the device, and the predicted GPU and host memory and weight-sync bytes against what is available.
"""

from __future__ import annotations

from functools import lru_cache

from core.options import OptionError, validate

SEQ_MULTIPLE = 128


class UserError(Exception):
    """Bad input: reported as one line, exit status 2."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(e, UserError) else f"{type(e).__name__}: {first}".strip()


def sync_config(cfg) -> dict:
    """The weight-sync options of a row: ``auto`` is filesystem (full weights, or the LoRA adapter)
    for RL, as prime-rl's published rows, and none for SFT."""
    from omegaconf import OmegaConf

    from core.options import CONF

    node = OmegaConf.to_container(cfg.sync, resolve=True) if cfg.get("sync") is not None else {"name": "none"}
    if node.get("name") == "auto":
        node = OmegaConf.to_container(OmegaConf.load(CONF / "sync" / ("filesystem.yaml" if cfg.task.name == "rl"
                                                                      else "none.yaml")))
    return node


def sync_label(node: dict) -> str:
    """The Sync column: method, and the options that change its cost."""
    name = node.get("name", "none")
    if name == "none":
        return "none"
    bits = [name]
    if name == "filesystem":
        bits.append("shm" if str(node.get("dir", "")).startswith("/dev/shm") else "disk")
    if name == "nccl" and node.get("backend", "auto") != "auto":
        bits.append(node["backend"])
    if node.get("overlap"):
        bits.append("overlap")
    return " ".join(bits)


#: top-level options outside the other key fields that change what a row measures
VARIANT_OPTIONS = ("compile_head", "fuse", "head_budget_mib", "fsdp")
#: plugin options the other key fields already say (ac.mode in the AC column, sync.dir and
#: sync.overlap in the Sync column) or that change nothing measured
VARIANT_SKIP = {"ac": {"mode"}, "sync": {"dir", "overlap", "cleanup"}}
#: values older rows spelled otherwise (adapter.experts was a bool before it named a mode)
VARIANT_LEGACY = {("adapter", "experts"): {True: "grouped", False: "none"}}


@lru_cache(maxsize=1)
def _primary_defaults() -> dict:
    from omegaconf import OmegaConf

    from core.options import CONF

    return OmegaConf.to_container(OmegaConf.load(CONF / "bench.yaml"), resolve=False)


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
    for group in ("adapter", "attn", "ac", "sync"):
        node = cfg.get(group)
        if not isinstance(node, dict):
            continue
        schema = group_schema(group, node.get("name"))
        for k in sorted(node):
            v = node[k]
            v = VARIANT_LEGACY.get((group, k), {}).get(v, v) if isinstance(v, bool) else v
            if k != "name" and k not in VARIANT_SKIP.get(group, ()) and v != schema.get(k):
                words.append(word(f"{group}.{k}", v))
    return " ".join(words)


def resolve(cfg, world: int = 1) -> dict:
    """Check a composed config and resolve it to plugins, model args and hardware. Allocates nothing."""
    try:
        validate(cfg)  # before torch is imported: bad values fail fast
    except OptionError as e:
        raise UserError(str(e)) from None
    import torch
    from omegaconf import OmegaConf

    from core import hardware
    from core.memory import host_available_gib, lora_params, param_count, predict_peak_gib, row_layout
    from core.plugins import PluginError, RunContext, registry
    from core.sync import SyncContext

    try:
        reg = registry()
    except PluginError as e:
        raise UserError(str(e)) from None
    want = cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible: use device=cpu (or device=auto)")
    ctx = RunContext.detect(world) if want != "cpu" else RunContext("cpu", world_size=world)
    notes = []
    family, flavour = cfg.model.family, str(cfg.model.flavour)
    seq_len = cfg.seq_len
    if family == "auto":
        if ctx.device == "cuda":
            family, flavour = "qwen3", "0.6B"
        else:
            family, flavour, seq_len = "qwen3", "tiny", min(seq_len, 512)
            notes.append(f"no CUDA GPU: running the tiny Qwen3 on the CPU at seq_len={seq_len} "
                         "(on a GPU machine the default is Qwen3-0.6B; pick one with model=...)")
    sync_node = sync_config(cfg)
    try:
        fam = reg.get("model_family", family).factory
        attn_e = reg.get("attn", cfg.attn.name)
        ac_e = reg.get("ac", cfg.ac.name)
        ad_e = reg.get("adapter", cfg.adapter.name)
        sync_e = reg.get("sync", sync_node["name"])
    except PluginError as e:
        raise UserError(str(e)) from None
    if fam.from_config is not None:  # shapes from a config (model.config=...), not a named flavour
        from omegaconf import OmegaConf

        try:
            args = fam.from_config(OmegaConf.to_container(cfg, resolve=True))
        except ValueError as e:
            raise UserError(str(e)) from None
        flavour = args.name
    elif flavour not in fam.flavours:
        raise UserError(f"model family '{family}' has no flavour '{flavour}': choose one of "
                        f"{', '.join(fam.flavours)}")
    else:
        args = fam.flavours[flavour]
    if cfg.task.name not in ("rl", "sft"):
        raise UserError(f"task '{cfg.task.name}' is unknown: use task=rl or task=sft")
    for e in (attn_e, ac_e, ad_e, sync_e):
        try:
            why = e.unavailable(ctx)
        except Exception as err:  # a plugin's own check that breaks names the plugin
            raise UserError(f"{e.kind} '{e.name}' ({e.provider}) failed its availability check: "
                            f"{first_line(err)}") from None
        if why:
            raise UserError(f"{e.kind} '{e.name}' cannot run here: {why}")
    try:
        hw = hardware.resolve(dict(cfg.hardware), ctx.gpu_name)
    except ValueError as e:
        raise UserError(str(e)) from None
    detected = hardware.profile_for(ctx.gpu_name) if ctx.device == "cuda" or ctx.gpu_name is None else None
    chosen = cfg.hardware.get("name")
    if chosen != "auto" and detected and hardware.load(detected)["name"] != chosen \
            and not cfg.get("hardware_as_label", False):
        raise UserError(f"hardware={str(chosen).lower()} does not match this machine ({ctx.gpu_name or 'CPU'}): "
                        "use hardware=auto, or add hardware_as_label=true to take it as a label")
    lora = cfg.adapter.name == "lora"
    if lora and cfg.adapter.get("replicate") is True:
        from core.trainer import replicate_refusal

        why = replicate_refusal(fam.build, family)
        if why:
            raise UserError(why)
    supports = attn_e.traits.get("supports")  # can the backend run this model's attention at all?
    why = supports(args) if supports else None
    if why:
        raise UserError(f"attn '{attn_e.name}' cannot run {args.name}: {why}")
    host = predicted_host_gib(cfg, args, seq_len, attn_e)
    host_avail = host_available_gib()
    limit = cfg.get("max_host_gib") or host_avail
    if host and limit and host > limit:
        instead = "+ac=offload (block inputs only)" if cfg.ac.get("mode") == "attention" else "+ac=recompute"
        raise UserError(f"offload would pin {host:.3g} GiB of host memory but {limit:.3g} GiB is available: "
                        f"try {instead} or a shorter seq_len")
    rank = cfg.adapter.get("rank") if lora else None
    layout = row_layout(OmegaConf.to_container(cfg, resolve=True))
    pred = predict_peak_gib(args, seq_len, rank, cfg.ac.name, world, cfg.head_budget_mib, cfg.ac.get("mode", "full"),
                            **{**layout, "kv_repeated": kv_repeated(attn_e)})  # the backend says, not a provider
    mem_limit = cfg.get("max_memory_gib") or (hw["memory_gib"] if ctx.device == "cuda" else host_avail)
    if mem_limit and pred > mem_limit:
        lean = "+ac=offload" if cfg.ac.name != "offload" else "a shorter seq_len"
        raise UserError(f"predicted peak memory {pred:.1f} GiB exceeds the {mem_limit:.1f} GiB available "
                        f"({'GPU' if ctx.device == 'cuda' else 'host'}): try {lean}, adapter=lora, more GPUs, "
                        "or max_memory_gib=<GiB> to run it anyway")
    sync_bytes = 2 * (lora_params(args, rank) if lora else param_count(args))
    sync_ctx = SyncContext(0, world, ctx.device, lora, sync_bytes)
    try:
        sync_obj = sync_e.factory(sync_node)
        why = sync_obj.check(sync_ctx)
    except ValueError as e:
        raise UserError(str(e)) from None
    if why:
        raise UserError(f"sync '{sync_e.name}': {why}")
    return dict(ctx=ctx, args=args, family=family, family_obj=fam, flavour=flavour, seq_len=seq_len, attn=attn_e,
                ac=ac_e, adapter=ad_e, hw=hw, notes=notes, host_gib=host, predicted_gib=pred,
                sync=sync_e, sync_node=sync_node, sync_obj=sync_obj, sync_ctx=sync_ctx)


def predicted_host_gib(cfg, args, seq_len: int, attn_entry=None) -> float:
    """Pinned host memory the row's activation strategy will use (0 without offload)."""
    from core.memory import predict_host_gib

    return predict_host_gib(args, seq_len, cfg.ac.name, cfg.ac.get("mode", "full"), cfg.ac.get("keep_last", 1),
                            kv_repeated=kv_repeated(attn_entry))


def kv_repeated(attn_entry) -> bool:
    """Whether the attention backend needs K/V repeated to the full head count (its ``repeats_kv`` trait)."""
    repeats = attn_entry.traits.get("repeats_kv") if attn_entry is not None else None
    return bool(repeats()) if repeats else False


def config_adapter_label(cfg) -> str:
    """The Type column's adapter text from the config alone (for rows that built no adapter)."""
    name = cfg.adapter.get("name", "?") if hasattr(cfg, "adapter") else "?"
    return f"LoRA(r={cfg.adapter.get('rank')})" if name == "lora" else str(name).capitalize()


def row_labels(cfg, r: dict | None, adapter_label: str, world: int) -> dict:
    """The row's key fields (model, type, seq_len, AC, attention, hardware, and every option that
    changes what is measured). ``r`` may be None for a row refused before it resolved."""
    ac_names = {"none": "None", "recompute": "Recompute", "offload": "Offload"}
    ac = ac_names.get(cfg.ac.name, cfg.ac.name)
    mode = cfg.ac.get("mode", "full")
    if mode and mode != "full" and cfg.ac.name != "none":
        ac += f" ({mode})"
    attn = cfg.attn.name.upper() if cfg.attn.name in ("fa2", "fa3") else cfg.attn.name
    task = str(cfg.task.name).upper()
    if r is not None:
        model, hf, family, flavour, seq = r["args"].name, r["args"].hf_name, r["family"], r["flavour"], r["seq_len"]
        hw_label, sync = r["hw"]["label"], sync_label(r["sync_node"])
    else:
        model, hf, family, flavour = str(cfg.model.get("family")), "", cfg.model.get("family"), cfg.model.get("flavour")
        seq, hw_label = cfg.get("seq_len"), str(cfg.hardware.get("label", cfg.hardware.get("name")))
        try:
            sync = sync_label(sync_config(cfg))
        except Exception:  # a sync config that does not resolve
            sync = str(cfg.get("sync", {}).get("name"))
    return {
        "model": model, "hf_name": hf, "family": family, "flavour": flavour,
        "task": task, "adapter": adapter_label, "type": f"{task} {adapter_label}",
        "seq_len": seq, "ac": ac, "attn": attn, "hardware": hw_label, "num_gpus": world,
        "hardware_label": f"{world}x{hw_label}", "micro_batches": cfg.get("micro_batches"),
        "packing": cfg.get("packing"), "compile": cfg.get("compile"), "sync": sync,
        "variant": variant_label(cfg),
    }
