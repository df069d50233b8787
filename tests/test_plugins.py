"""The plugin manager: built-ins, duplicates, blocklist, broken third-party plugins, row hook."""

import types

import pytest

import core.plugins as P
from core import hookimpl


class FakeEP:
    def __init__(self, name, obj=None, error=None):
        self.name, self.obj, self.error = name, obj, error

    def load(self):
        if self.error:
            raise self.error
        return self.obj


def plugin_module(name, attn_name):
    m = types.ModuleType(name)

    @hookimpl
    def stepbench_register_attention(register):
        register(attn_name, lambda cfg: None, doc="test")

    m.stepbench_register_attention = stepbench_register_attention
    return m


def build(monkeypatch, eps, blocked=frozenset()):
    monkeypatch.setattr(P, "entry_points", lambda group: eps)
    monkeypatch.delenv(P.NO_AUTOLOAD_ENV, raising=False)
    pm, broken = P.make_manager(set(blocked))
    return P.collect(pm, broken, set(blocked))


def test_builtins_registered(monkeypatch):
    reg = build(monkeypatch, [])
    assert {"sdpa", "fa2", "fa3", "cudnn", "auto"} <= set(reg.names("attn"))
    assert {"none", "recompute", "offload"} <= set(reg.names("ac"))
    assert {"full", "lora"} <= set(reg.names("adapter"))
    assert {"qwen3", "qwen3_moe", "glm4_moe"} <= set(reg.names("model_family"))
    assert reg.get("attn", "sdpa").provider == "plugins.attention.sdpa"


def test_third_party_plugin_found(monkeypatch):
    reg = build(monkeypatch, [FakeEP("extra", plugin_module("extra", "myattn"))])
    assert reg.get("attn", "myattn").provider == "extra"


def test_duplicate_names_both_providers(monkeypatch):
    with pytest.raises(P.PluginError, match=r"duplicate attn 'sdpa'.*plugins\.attention\.sdpa.*dup"):
        build(monkeypatch, [FakeEP("dup", plugin_module("dup", "sdpa"))])


def test_blocklist_blocks_plugin_and_items(monkeypatch):
    reg = build(monkeypatch, [FakeEP("dup", plugin_module("dup", "sdpa"))], blocked={"dup", "attn:cudnn"})
    assert "cudnn" not in reg.names("attn") and reg.get("attn", "sdpa").provider == "plugins.attention.sdpa"
    reg = build(monkeypatch, [], blocked={"fa3"})  # a built-in module by its short name
    assert "fa3" not in reg.names("attn")


def test_broken_plugin_reported_rest_work(monkeypatch, capsys):
    reg = build(monkeypatch, [FakeEP("bad", error=ImportError("no module named kernels_xyz")),
                              FakeEP("good", plugin_module("good", "goodattn"))])
    assert reg.broken == [("bad", "ImportError: no module named kernels_xyz")]
    assert "goodattn" in reg.names("attn")
    assert "failed to load" in capsys.readouterr().err


def test_unknown_name_lists_choices(monkeypatch):
    reg = build(monkeypatch, [])
    with pytest.raises(P.PluginError, match="unknown attn 'nope': choose one of auto, cudnn"):
        reg.get("attn", "nope")


def test_every_hook_documented():
    from core import hookspecs

    for name in ("stepbench_register_attention", "stepbench_register_checkpointing",
                 "stepbench_register_adapters", "stepbench_register_models", "stepbench_row_finished"):
        assert getattr(hookspecs, name).__doc__.strip()


def test_row_finished_hook_called(monkeypatch):
    seen = []
    m = types.ModuleType("observer")
    m.stepbench_row_finished = hookimpl(lambda row: seen.append(row["id"]))
    monkeypatch.setattr(P, "entry_points", lambda group: [FakeEP("observer", m)])
    monkeypatch.delenv(P.NO_AUTOLOAD_ENV, raising=False)
    P._cached_manager.cache_clear()
    try:
        P.notify_row({"id": "r1"})
    finally:
        P._cached_manager.cache_clear()
    assert seen == ["r1"]
