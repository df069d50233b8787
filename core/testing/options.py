"""The options check: a plugin's factory takes its yaml defaults and refuses a bad value."""

from __future__ import annotations

import json
import math
from typing import Any, Callable, NamedTuple

from core.contracts import (ActivationMemory, Adapter, AttentionBackend, ModelFamily, RecomputeFacts, RunContext,
                            SyncContext, TrainableModel)
from core.models.flavours import QWEN3
from core.testing.reference import _fail, _members, _optional_str


def _group(kind: str) -> str:
    return "model" if kind == "model_family" else kind


def load_options(kind: str, options) -> list[dict]:
    """The option nodes a factory of ``kind`` gets from ``options`` (a dict, or the path of its
    yaml file): the node itself and, for an appended group (``+attn=``, ``+ac=``, ``+sync=``), the
    node merged onto the primary config's defaults (what ``+ac=<name>`` composes)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from core.options import APPENDED, conf_dir

    if isinstance(options, (str, Path)):
        options = OmegaConf.to_container(OmegaConf.load(options), resolve=True)
    nodes = [dict(options)]
    group = _group(kind)
    if group in APPENDED:
        primary = OmegaConf.to_container(OmegaConf.load(conf_dir() / "bench.yaml"), resolve=False).get(group) or {}
        merged = {**primary, **options}
        if merged != nodes[0]:
            nodes.append(merged)
    return nodes


def check_options_roundtrip(kind: str, options, bad: dict | None = None, ctx: RunContext | None = None) -> dict:
    """A registered plugin's Hydra options: its factory (``core.plugins.Entry.make``) accepts
    ``options`` (a dict, or its yaml file; also as merged onto the primary config's defaults, see
    :func:`load_options`) and makes a plugin of that name with a label, cheaply; each ``key:
    value`` of ``bad`` alone makes it raise ``ValueError`` with one line. ``why_not(ctx)`` is None or
    a reason. For ``model_family``, ``options`` is a model yaml (``family``, ``flavour``): the
    family is registered and has the flavour (or shapes from a config); a ``bad`` flavour it has not."""
    from core.plugins import KINDS, registry

    ctx = ctx or RunContext()
    if kind not in KINDS.values():
        _fail(f"kind {kind!r}", f"is not one of {', '.join(KINDS.values())}")
    nodes = load_options(kind, options)
    key = "family" if kind == "model_family" else "name"
    name = nodes[0].get(key)
    entry = registry().get(kind, name)
    what = f"{kind} {name!r} ({entry.provider})"
    if not isinstance(entry.doc, str):
        _fail(what, "its doc (register(..., doc=...)) must be a str")
    why = entry.unavailable(ctx)
    if not _optional_str(why):
        _fail(what, f"why_not(ctx) returned {why!r}: None or a reason (a str)")
    rejected = {}
    if kind == "model_family":
        fam = entry.factory
        flavour = str(nodes[0].get("flavour"))
        if fam.from_config is None and flavour not in fam.flavours:
            _fail(what, f"has no flavour {flavour!r} (its flavours: {', '.join(fam.flavours)})")
        for k, v in (bad or {}).items():
            if k != "flavour" or str(v) in fam.flavours:
                _fail(what, f"the bad value {k}={v!r} is accepted")
            rejected[k] = f"no flavour {v!r}"
        return {"kind": kind, "name": name, "accepted": nodes, "rejected": rejected}
    for node in nodes:
        try:
            obj = entry.make(node, ctx)
        except ValueError as e:
            _fail(what, f"rejects its own options {node}: {e}")
        if getattr(obj, "name", None) != name:
            _fail(what, f"made a plugin named {getattr(obj, 'name', None)!r} for name={name!r}")
        _members(obj, what, {"label": lambda v: isinstance(v, str) and v})
    for k, v in (bad or {}).items():
        try:
            entry.make({**nodes[-1], k: v}, ctx)
        except ValueError as e:
            msg = str(e)
            if not msg or "\n" in msg.strip():
                _fail(what, f"{k}={v!r}: its ValueError must be one line that says what to type instead, got {msg!r}")
            rejected[k] = msg
        else:
            _fail(what, f"accepts the bad value {k}={v!r}: its factory must raise ValueError")
    return {"kind": kind, "name": name, "accepted": nodes, "rejected": rejected}
