"""Every option of a row, typed and ranged, checked once before anything is allocated.

Top-level keys have an entry in ``OPTIONS``; the keys of a plugin group (``adapter.rank``,
``sync.overlap``, ...) take the type of their default in ``conf/<group>/*.yaml``. Unknown keys are
errors that name the nearest valid key. Every message says what to type instead.
"""

from __future__ import annotations

import difflib
import math
from functools import lru_cache

from core.paths import conf_dir  # noqa: F401 (this module's interface too)

CONF = conf_dir()
#: groups whose nodes are plugin options (their keys come from the group's yaml files)
PLUGIN_GROUPS = ("model", "task", "adapter", "hardware", "attn", "ac", "sync", "kernels", "peer")
APPENDED = ("attn", "ac", "sync", "kernels", "peer", "sweep")


class OptionError(ValueError):
    """A bad option value: one line naming the option and what to type instead."""


#: the largest integer any option takes (a 64-bit signed integer: larger ones overflow where torch gets them)
INT_MAX = 2**63 - 1
#: seeds: torch's generators take 64 bits, and the trainer derives per-tensor seeds as seed * 1_000_003 + ...
SEED_MAX = 2**32 - 1


def _int(name, v, lo=None, multiple=None, example=None, hi=INT_MAX):
    try_ = example if example is not None else lo
    if isinstance(v, bool) or not isinstance(v, int):
        raise OptionError(f"{name} must be an integer (got {v!r}): try {name}={try_}")
    if multiple and (v <= 0 or v % multiple):
        good = max(multiple, round(v / multiple) * multiple)
        good = good if good <= hi else hi - hi % multiple
        raise OptionError(f"{name} must be a positive multiple of {multiple} (got {v}): try {name}={good}")
    if lo is not None and v < lo:
        raise OptionError(f"{name} must be at least {lo} (got {v}): try {name}={try_}")
    if v > hi:
        raise OptionError(f"{name} must be at most {hi} (got {v}): try {name}={try_}")
    return v


def _float(name, v, lo=0.0, example=1, allow_none=False, strict=False):
    if v is None and allow_none:
        return v
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_MAX:
        raise OptionError(f"{name} must be a number below {INT_MAX} (got {v!r}): try {name}={example}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise OptionError(f"{name} must be a number (got {v!r}): try {name}={example}")
    if v < lo or (strict and v == lo):
        raise OptionError(f"{name} must be {'above' if strict else 'at least'} {lo} (got {v}): try {name}={example}")
    return v


def _float_max(name, v, hi: float, example):
    _float(name, v, 0.0, example)
    if v > hi:
        raise OptionError(f"{name} must be at most {hi:g} (got {v}): try {name}={example}")
    return v


def _tag(v):
    """``tag``: text, or a number Hydra read from it; not one JSON cannot hold (nan, inf)."""
    import math

    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        _not_text("tag", v)
    if isinstance(v, float) and not math.isfinite(v):
        raise OptionError(f"tag={v} is read as a number a row cannot store (JSON has no {v}): quote it for Hydra "
                          f"inside the shell's quotes, e.g. \"tag='{v}'\"")
    if len(str(v)) > TAG_MAX:  # it is in every printed row and table: a label, not a document
        raise OptionError(f"tag is {len(str(v)):,} characters, more than the {TAG_MAX} a row's label may have: "
                          "shorten it, e.g. tag=fa3-ab")
    return v


#: the longest ``tag`` (a row's label, printed with it)
TAG_MAX = 200


def _not_text(name, v):
    raise OptionError(f"{name} must be text (got {v!r}): quote it for Hydra inside the shell's quotes, e.g. "
                      f"\"{name}='a,b'\"")


def _bool(name, v):
    if not isinstance(v, bool):
        raise OptionError(f"{name} must be true or false (got {v!r}): type {name}=true or {name}=false")
    return v


def _fail(msg: str):
    raise OptionError(msg)


def _choice(name, v, choices):
    if v not in choices:
        raise OptionError(f"{name} '{v}' is unknown: use " + ", ".join(f"{name}={c}" for c in choices))
    return v


def _results(v) -> str:
    if not isinstance(v, str) or not v.strip():
        raise OptionError(f"results must be a file name (got {v!r}): try results=runs/rows.jsonl")
    if v.endswith("/"):
        raise OptionError(f"results={v} is a directory: name a file, e.g. results={v}rows.jsonl")
    return v


def check_packing(v) -> str:
    """single | random | fixed:N (documents of N tokens, N >= 2: a one-token document predicts nothing)."""
    if v in ("single", "random"):
        return v
    if isinstance(v, str) and v.startswith("fixed:"):
        n = v.split(":", 1)[1]
        if n.isascii() and n.isdigit() and int(n) >= 2:
            if n != str(int(n)):  # one row key per length: fixed:0002 would be stored apart from fixed:2
                raise OptionError(f"packing={v}: write the length without leading zeros: packing=fixed:{int(n)}")
            return v
    raise OptionError(f"packing={v!r} is unknown: use packing=single, packing=random or packing=fixed:N (documents "
                      "of N tokens, N >= 2, e.g. packing=fixed:1024)")


def _trace_path(v):
    """null, or a file name ending in .json or .json.gz (a Chrome/Perfetto trace)."""
    if v is None or (isinstance(v, str) and v.endswith((".json", ".json.gz")) and not v.endswith("/")):
        return v
    raise OptionError(f"ops_trace must be a file name ending in .json.gz (got {v!r}): try "
                      "ops_trace=runs/trace.json.gz")


OPTIONS = {
    # upper bounds: what one row can hold (a million-token micro-batch, a thousand micro-batches or
    # a million steps already run for days), so a typo is refused instead of hanging the data loader
    "seq_len": lambda v: _int("seq_len", v, 128, 128, 8192, hi=2**20),
    "micro_batches": lambda v: _int("micro_batches", v, 1, example=2, hi=1024),
    "steps": lambda v: _int("steps", v, 2, example=6, hi=10**6),
    "measure_s": lambda v: _float_max("measure_s", v, 86400.0, 30),
    "packing": check_packing,
    "seed": lambda v: _int("seed", v, 0, example=0, hi=SEED_MAX),
    "compile": lambda v: v if v == "auto" else _bool("compile", v),
    "compile_head": lambda v: _bool("compile_head", v),
    "fuse": lambda v: v if isinstance(v, bool) or v == "lora" else _fail(
        f"fuse '{v}' is unknown: use fuse=lora, fuse=true or fuse=false"),
    "fsdp": lambda v: v if v is True or v == "auto" else _fail(
        f"fsdp={v!r} is unknown: use fsdp=auto (FSDP2 unless one GPU has nothing for it to train) or fsdp=true"),
    "head_budget_mib": lambda v: _int("head_budget_mib", v, 1, example=512, hi=1 << 20),
    "device": lambda v: _choice("device", v, ("auto", "cuda", "cpu")),
    "results": _results,
    "tag": lambda v: _tag(v),
    "row_timeout_s": lambda v: _float("row_timeout_s", v, 0.0, 1800, strict=True) and _float_max("row_timeout_s", v,
                                                                                                  7 * 86400.0, 1800),
    "redo": lambda v: _bool("redo", v),
    "repeats": lambda v: _int("repeats", v, 1, example=3, hi=100),
    "max_memory_gib": lambda v: _float("max_memory_gib", v, 0.0, 80, allow_none=True, strict=True),
    "max_host_gib": lambda v: _float("max_host_gib", v, 0.0, 64, allow_none=True, strict=True),
    "memory_profile": lambda v: _bool("memory_profile", v),
    "ops_profile": lambda v: _bool("ops_profile", v),
    "ops_trace": lambda v: _trace_path(v),
    "busy_step": lambda v: _bool("busy_step", v),
    "hardware_as_label": lambda v: _bool("hardware_as_label", v),
}


def nearest_name(word: str, choices) -> str | None:
    """The choice ``word`` most likely meant (a typo or another case), or None."""
    low = {str(c).lower(): c for c in choices}
    if str(word).lower() in low:
        return low[str(word).lower()]
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return close[0] if close else None


def _nearest(word: str, choices) -> str:
    close = nearest_name(word, choices)
    return f" (did you mean {close}?)" if close else ""


def _word(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


@lru_cache(maxsize=None)
def _primary_group(group: str) -> dict:
    """The primary config's defaults of a group (``ac: {name, mode, inside}``), without ``name``."""
    from core.resolve import _primary_defaults

    node = _primary_defaults().get(group)
    return {k: v for k, v in node.items() if k != "name"} if isinstance(node, dict) else {}


@lru_cache(maxsize=None)
def _group_nodes(group: str) -> tuple:
    """Every yaml file of a group, in stepbench's configs and those of the installed plugin packages
    (:func:`core.paths.plugin_conf_dirs`), as dicts (files that are not mappings left out)."""
    from omegaconf import OmegaConf

    from core.paths import plugin_conf_dirs

    files = [f for d in [CONF, *plugin_conf_dirs()] for f in sorted((d / group).glob("*.yaml"))]
    nodes = (OmegaConf.to_container(OmegaConf.load(f), resolve=False) for f in files)
    return tuple(n for n in nodes if isinstance(n, dict))


@lru_cache(maxsize=None)
def plugin_own_keys(group: str, name) -> frozenset:
    """The keys a plugin's own config files declare (every file of the group whose ``name`` is
    ``name``): the options it reads. Empty where it has no config file."""
    return frozenset(k for n in _group_nodes(group) if n.get("name") == name for k in n)


@lru_cache(maxsize=None)
def group_schema(group: str, name: str) -> dict:
    """Keys and default values a group option may have: from every yaml file of the group whose
    ``name`` is ``name`` (plugin options share a plugin name), in stepbench's configs and those of
    the installed plugin packages (:func:`core.paths.plugin_conf_dirs`), and the primary config's
    default. Read once per (group, name); callers must not change the dict."""
    schema: dict = dict(_primary_group(group))  # an appended group merges onto the primary config's defaults
    nodes = _group_nodes(group)  # the named node's values first (they are its examples), then the others' keys
    for node in [n for n in nodes if n.get("name") == name] + [n for n in nodes if n.get("name") != name]:
        if node.get("name") == name or group in ("model", "hardware"):
            for k, v in node.items():
                schema.setdefault(k, v)
    if len(schema) and "name" not in schema:
        schema["name"] = name
    return schema


@lru_cache(maxsize=1)
def _model_nodes() -> tuple:
    """Every model config (stepbench's and the installed plugin packages'), read once."""
    from omegaconf import OmegaConf

    from core.paths import plugin_conf_dirs

    nodes = (OmegaConf.to_container(OmegaConf.load(f), resolve=False)
             for d in [CONF, *plugin_conf_dirs()] for f in sorted((d / "model").glob("*.yaml")))
    return tuple(n for n in nodes if isinstance(n, dict))


def _families() -> set:
    return {str(n["family"]) for n in _model_nodes() if n.get("family")}


@lru_cache(maxsize=None)
def family_keys(family: str) -> frozenset:
    """The keys the model configs of one family have (``model.plain`` is the hf family's only)."""
    return frozenset(k for n in _model_nodes() if str(n.get("family")) == family for k in n)


#: plugin options whose least value is not 0 (every other number of a plugin group is a count, a size
#: or a rate: 0 or more); hardware profile numbers are all above 0. LoRA's alpha below 0.01 scales the
#: update by less than 1e-3 at r=16: a typo (1e-30 would leave the adapters' gradients underflowing)
PLUGIN_MIN = {"adapter.rank": 1, "adapter.alpha": 0.01, "sync.keep": 1, "sync.bucket_mib": 1, "peer.timeout_s": 1}
#: plugin options that are lists of regular expressions (op names to save)
PLUGIN_PATTERNS = ("ac.save",)


#: plugin options whose yaml default is a whole number but which take any number (LoRA's alpha: peft's
#: lora_alpha is a float; the update is scaled by alpha / rank)
FLOAT_OPTIONS = ("adapter.alpha",)

#: hardware profile numbers a GPU can have (a typo's 1e-320 or 1e300 would make every figure absurd)
HARDWARE_RANGE = {"hardware.peak_flops": (1e12, 1e17), "hardware.memory_gib": (1.0, 4096.0),
                  "hardware.mm_tflops": (1.0, 1e5), "hardware.attn_tflops": (1.0, 1e5),
                  "hardware.attn_tflops_fa2": (1.0, 1e5), "hardware.hbm_tbps": (0.01, 1000.0),
                  "hardware.link_gbps": (0.1, 1e5)}


def _typed(name: str, v, default):
    if default is None or isinstance(default, str):
        return
    group = name.split(".", 1)[0]
    if isinstance(default, bool):
        _bool(name, v)
    elif isinstance(default, (int, float)) and group == "hardware":
        _float(name, v, 0.0, example=default, strict=True)
        lo, hi = HARDWARE_RANGE.get(name, (0.0, float("inf")))
        if not lo <= v <= hi:
            raise OptionError(f"{name}={v:g} is outside what a GPU has ({lo:g} to {hi:g}): try {name}={default:g}")
    elif isinstance(default, int) and name in FLOAT_OPTIONS:  # an int default, a real-valued option
        _float(name, v, 0.0, example=default, strict=True)
        if v < PLUGIN_MIN.get(name, 0):
            raise OptionError(f"{name}={v:g} is below {PLUGIN_MIN[name]:g} (it would scale the update to nothing): "
                              f"try {name}={default}")
    elif isinstance(default, int):
        _int(name, v, example=default)
        lo = PLUGIN_MIN.get(name, 0)
        if v < lo:
            raise OptionError(f"{name} must be {'a positive integer' if lo == 1 else 'a whole number, 0 or more'} "
                              f"(got {v}): try {name}={default}")
    elif isinstance(default, float):
        _float(name, v, 0.0, example=default, strict=group == "hardware")
    elif isinstance(default, list) and not isinstance(v, (list, tuple)):
        raise OptionError(f"{name} must be a list (got {v!r}): try {name}=[{','.join(map(str, default))}]")
    elif isinstance(default, list) and all(isinstance(x, str) for x in v):  # names: one twice keys a row anew
        seen: list = []
        twice = next((x for x in v if x in seen or seen.append(x)), None)
        if twice is not None:
            raise OptionError(f"{name} lists {twice} twice: give each once, e.g. "
                              f"{name}=[{','.join(map(str, dict.fromkeys(v)))}]")
    if name in PLUGIN_PATTERNS and isinstance(v, (list, tuple)):
        import re

        for x in v:
            try:
                re.compile(str(x))
            except re.error as e:
                raise OptionError(f"{name}: {x!r} is not a regular expression ({e}): name an op kind, e.g. "
                                  f"{name}=[{','.join(map(str, default))}]") from None


def validate(cfg) -> None:
    """Check every key of a composed config; raises :class:`OptionError` with one line."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    known = set(OPTIONS) | set(PLUGIN_GROUPS) | {"sweep"}
    for key, value in plain.items():
        if key not in known:
            hint = _nearest(key, known)
            raise OptionError(f"unknown option '{key}'{hint}: see python -m core.bench --list for the options")
        if key in OPTIONS:
            OPTIONS[key](value)
    pack, seq = plain.get("packing"), plain.get("seq_len")
    if isinstance(pack, str) and pack.startswith("fixed:") and isinstance(seq, int) and int(pack[6:]) >= seq:
        raise OptionError(f"packing={pack}: documents of {pack[6:]} tokens fill no more than one of seq_len={seq}: "
                          f"use packing=single, or N below {seq} (e.g. packing=fixed:{max(2, seq // 4)})")
    for group in PLUGIN_GROUPS:
        node = plain.get(group)
        if not isinstance(node, dict):
            continue
        schema = group_schema(group, node.get("name"))
        if group == "model" and node.get("family"):  # the keys of its family's configs, not every family's
            schema = {k: v for k, v in schema.items() if k in family_keys(str(node["family"]))} or schema
        if not schema:
            continue
        for k, v in node.items():
            if group == "model" and k not in schema and k in group_schema(group, None):
                fams = sorted(f for f in _families() if k in family_keys(f))
                raise OptionError(f"model.{k} is an option of the {', '.join(fams)} family's models, not of "
                                  f"{node.get('family')}'s: pick one of those (e.g. model={fams[0]}), or leave "
                                  f"model.{k} out")
            if k not in schema:
                which = node.get("name") or node.get("family")
                raise OptionError(f"unknown option '{group}.{k}'{_nearest(k, schema)} for {group} "
                                  f"'{which}': its options are {', '.join(sorted(schema))}")
            _typed(f"{group}.{k}", v, schema[k])
        own = plugin_own_keys(group, node.get("name")) if group in ("attn", "ac", "sync", "kernels") else set()
        primary = _primary_group(group)
        for k, v in node.items():  # a default every plugin of the group gets, set for one that does not read it
            if own and k != "name" and k in primary and k not in own and v != primary[k]:
                raise OptionError(f"{group}.{k}={_word(v)} does nothing for +{group}={node.get('name')} (its options: "
                                  f"{', '.join(sorted(own - {'name'})) or 'none'}): leave {group}.{k} out")
    if plain.get("compile") is False and plain.get("compile_head") is False:
        raise OptionError("compile_head=false switches off compiling the log-prob head, and compile=false compiles "
                          "nothing: leave compile_head out")
