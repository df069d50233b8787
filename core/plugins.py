"""The plugin manager: built-in plugins first, then the ``stepbench`` entry-point group.

Environment:

* ``STEPBENCH_BLOCK_PLUGINS``: comma-separated names to block. A name matches a plugin (an
  entry-point name, or a built-in module's short name such as ``fa3``) or a registered item
  (``attn:fa3`` or a bare item name). Blocked plugins are not loaded; blocked items are dropped.
* ``STEPBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: load built-ins only.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from core import PROJECT, hookspecs
from core.paths import autoload_disabled
from core.contracts import RunContext
from core.errors import first_line

BLOCK_ENV = "STEPBENCH_BLOCK_PLUGINS"
NO_AUTOLOAD_ENV = "STEPBENCH_DISABLE_PLUGIN_AUTOLOAD"

#: built-in plugin modules, registered exactly like third-party ones
BUILTIN_PLUGINS = (
    "plugins.models.native",
    "plugins.attention.sdpa",
    "plugins.attention.cudnn",
    "plugins.attention.fa2",
    "plugins.attention.fa3",
    "plugins.attention.flex",
    "plugins.attention.auto",
    "plugins.checkpointing.none",
    "plugins.checkpointing.recompute",
    "plugins.checkpointing.offload",
    "plugins.adapters.full",
    "plugins.adapters.lora",
    "plugins.sync.none",
    "plugins.sync.auto",
    "plugins.sync.host",
    "plugins.sync.filesystem",
    "plugins.sync.nccl",
    "plugins.models.hf",
    "plugins.kernels.eager",
    "plugins.kernels.triton_kernels",
    "plugins.kernels.liger",
    "plugins.peers.none",
    "plugins.peers.hf",
    "plugins.peers.prime_rl",
    "plugins.peers.torchtitan",
)

#: hook name -> registry kind (also the Hydra group a user selects it with)
KINDS = {
    "stepbench_register_attention": "attn",
    "stepbench_register_checkpointing": "ac",
    "stepbench_register_adapters": "adapter",
    "stepbench_register_models": "model_family",
    "stepbench_register_weight_sync": "sync",
    "stepbench_register_kernels": "kernels",
    "stepbench_register_peers": "peer",
}


class PluginError(Exception):
    """A plugin problem the user must fix (duplicate name, unknown name)."""


@dataclass
class Entry:
    kind: str
    name: str
    factory: Any
    provider: str
    why_not: Callable[[RunContext], str | None] | None = None
    doc: str = ""

    def unavailable(self, ctx: RunContext) -> str | None:
        """None when this plugin can run in ``ctx``, else the reason it cannot."""
        return self.why_not(ctx) if self.why_not else None

    def make(self, options: dict, ctx: RunContext | None = None):
        """The plugin object for ``options`` (its Hydra node as a dict) in ``ctx`` (default: a CPU
        context): cheap, allocates nothing; ``ValueError`` with one line for bad options."""
        return self.factory(dict(options), ctx or RunContext())


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)
    broken: list[tuple[str, str]] = field(default_factory=list)  # (plugin, first error line)
    blocked: set[str] = field(default_factory=set)
    matched: set[str] = field(default_factory=set)  # blocklist names that matched a plugin or item

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            choices = ", ".join(self.names(kind)) or "(none)"
            blocked = f" ({BLOCK_ENV}={os.environ[BLOCK_ENV]} blocks plugins here)" if _blocklist() else ""
            raise PluginError(f"unknown {kind} '{name}'{blocked}: choose one of {choices}") from None


def _blocklist() -> set[str]:
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def make_manager(blocked: set[str] | None = None) -> tuple[pluggy.PluginManager, list[tuple[str, str]]]:
    """Create the plugin manager with built-ins and entry-point plugins registered.

    Returns the manager and the plugins that failed to import, as (name, error) pairs.
    """
    blocked = _blocklist() if blocked is None else blocked
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    broken: list[tuple[str, str]] = []
    for mod in BUILTIN_PLUGINS:
        short = mod.rsplit(".", 1)[-1]
        if short in blocked or mod in blocked:
            continue
        pm.register(importlib.import_module(mod), name=mod)
    if autoload_disabled():
        return pm, broken
    for ep in entry_points(group=PROJECT):
        if ep.name in blocked:
            continue
        try:
            plugin = ep.load()
        except Exception as e:  # a broken third-party plugin must not take the others down
            first = first_line(e, with_type=False) or type(e).__name__
            broken.append((ep.name, first_line(e, with_type=True)))
            print(f"stepbench: plugin '{ep.name}' failed to load and was skipped: {first}", file=sys.stderr)
            continue
        pm.register(plugin, name=ep.name)
    return pm, broken


def collect(pm: pluggy.PluginManager, broken=(), blocked: set[str] | None = None) -> Registry:
    """Call every registration hook and build the registry; duplicates are an error."""
    blocked = _blocklist() if blocked is None else blocked
    reg = Registry(broken=list(broken), blocked=set(blocked))
    for mod in BUILTIN_PLUGINS:
        reg.matched.update({mod, mod.rsplit(".", 1)[-1]} & blocked)
    if not autoload_disabled():
        reg.matched.update({ep.name for ep in entry_points(group=PROJECT)} & blocked)
    for hook_name, kind in KINDS.items():
        reg.entries.setdefault(kind, {})
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            provider = impl.plugin_name

            def register(name, factory, why_not=None, doc="", _kind=kind, _provider=provider):
                if name in blocked or f"{_kind}:{name}" in blocked:
                    reg.matched.update({name, f"{_kind}:{name}"} & blocked)
                    return
                table = reg.entries[_kind]
                if name in table:
                    raise PluginError(
                        f"duplicate {_kind} '{name}': registered by both '{table[name].provider}' "
                        f"and '{_provider}'; block one with {BLOCK_ENV}={_provider}"
                    )
                table[name] = Entry(_kind, name, factory, _provider, why_not, doc)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as e:  # a registration hook that raises names its plugin
                raise PluginError(f"plugin '{provider}' failed to register its {kind} plugins: "
                                  f"{first_line(e, with_type=True)}; block it with {BLOCK_ENV}={provider}") from None
    unmatched = sorted(blocked - reg.matched)
    if unmatched:
        raise PluginError(f"{BLOCK_ENV} names {', '.join(repr(n) for n in unmatched)}, which matches no plugin "
                          "or item: see python -m core.bench --list for the names")
    return reg


@lru_cache(maxsize=1)
def _cached_manager():
    pm, broken = make_manager()
    return pm, broken


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry (built once)."""
    pm, broken = _cached_manager()
    return collect(pm, broken)


def make(kind: str, options: dict, ctx: RunContext | None = None):
    """The registered ``kind`` plugin named by ``options["name"]``, made from ``options`` (a row's
    composed or stored config node): what the core asks for a plugin's declarations."""
    return registry().get(kind, options["name"]).make(options, ctx)


def notify_row(row: dict) -> None:
    """Tell every plugin that implements ``stepbench_row_finished`` about a finished row."""
    pm, _ = _cached_manager()
    pm.hook.stepbench_row_finished(row=row)
