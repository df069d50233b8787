"""The ``hf`` model family: Hugging Face ``transformers`` causal LMs run by stepbench.

    python -m core.bench model=hf model.config=PATH/config.json     # any Qwen3 / Qwen3-MoE config
    python -m core.bench model=hf_qwen3_0_6b +attn=fa3 +ac=offload    # the published models (conf/model/)
    python -m core.bench model=hf_qwen3_0_6b model.plain=true +attn=sdpa +ac=recompute   # the plain HF loop

Registered through ``stepbench_register_models`` like a third-party family. The model is built by
``transformers`` from its config (on the meta device, random seeded init: no weights downloaded)
and keeps transformers' own modules (embedding, decoder layers with their attention projections,
norms, MLP or MoE block, final norm). stepbench plugs into it where transformers allows:

- attention: the row's backend runs inside transformers' attention through its
  attention-function registry (``attn_implementation="stepbench"``), on packed documents: the
  tensors transformers hands over are ``[1, heads, tokens, head_dim]``; the backend gets them as
  ``[tokens, heads, head_dim]`` with the micro-batch's ``cu_seqlens`` and ``max_seqlen``;
- activation memory: each decoder layer is a block for the AC strategy (recompute, offload);
- adapters: peft wraps the same ``q_proj`` ... ``down_proj`` modules;
- head: stepbench's chunked log-prob head on the final hidden states (no ``[tokens, vocab]``
  logits), then the same RL/SFT losses; FSDP2 shards each decoder layer.

Parameter names equal the native families' (``embed_tokens``, ``layers.N.self_attn.q_proj``, ...),
so the seeded init gives both the same weights and the two can be compared directly.

``model.plain=true`` is what users run today instead: transformers' own forward with
``attn_implementation="sdpa"``, its gradient checkpointing for ``+ac=recompute``, and the loss
over full fp32 logits (log-softmax over the vocabulary); LoRA through peft as above.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from core import hookimpl
from core.contracts import ModelFamily
from core.models.common import CausalLM, ModelArgs, Rotary, rope_inv_freq, run_block

#: model types whose decoder layers and shapes are mapped (and checked against the native ones)
SUPPORTED = ("qwen3", "qwen3_moe")
HF_SUFFIX, PLAIN_SUFFIX = " (hf)", " (plain HF)"


def _config_dict(value) -> dict:
    """A config.json's fields from a mapping, a file, a folder holding config.json, or a hub id."""
    if isinstance(value, dict):
        return dict(value)
    if value is None or str(value).strip() == "":
        raise ValueError("model=hf needs a config: add model.config=PATH/config.json (or a hub id where the "
                         "machine is online), or use model=hf_qwen3_0_6b")
    p = Path(str(value)).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"model.config={value} is a folder without config.json: pass the config.json path "
                             "(or a folder holding one)")
        p = p / "config.json"
    if p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"model.config={value}: not a readable config.json ({why}): pass a model's "
                             "config.json (a JSON object)") from None
        if not isinstance(d, dict):
            raise ValueError(f"model.config={value}: not a JSON object (a config.json holds {{\"model_type\": ..., "
                             "\"hidden_size\": ...}): pass a model's config.json") from None
        return d
    if str(value).count("/") == 1 and not str(value).startswith((".", "/", "~")):
        try:  # a hub id: only the config is fetched, never weights
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(str(value)).to_dict()
        except Exception as e:  # offline, unknown repo
            raise ValueError(f"model.config={value}: no such file, and the hub config could not be fetched "
                             f"({type(e).__name__}): pass a local config.json path") from None
    raise ValueError(f"model.config={value}: no such file or folder: pass a config.json path "
                     "(or a folder holding one)")


def hf_config(d: dict):
    """The transformers config object of a config.json's fields."""
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type", None)
    if model_type is None:
        raise ValueError("model.config has no model_type: add model_type (qwen3 or qwen3_moe)")
    try:
        return AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError) as e:
        why = str(e).splitlines()[0].split(". Should contain")[0] if str(e) else type(e).__name__
        raise ValueError(f"transformers cannot build model_type '{model_type}' ({why}): use qwen3 or qwen3_moe") \
            from None


#: the shape fields every mapped config must state (transformers' defaults are another model's),
#: with Qwen3-0.6B's (dense) or Qwen3-30B-A3B's (MoE) values as the example of what to type
SHAPE_FIELDS = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                "vocab_size": 151936}
DENSE_FIELDS = {"intermediate_size": 3072}
MOE_FIELDS = {"moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8}
#: the largest size a shape field may have (a tensor dimension torch's kernels index with 32 bits)
SIZE_MAX = 2**31 - 1
#: the largest count of layers, heads and experts a config may state (the largest published models
#: have about a hundred layers and a few hundred experts; building millions of modules hangs)
COUNT_MAX = {"num_hidden_layers": 1024, "num_attention_heads": 4096, "num_key_value_heads": 4096,
             "num_experts": 4096, "num_experts_per_tok": 4096}
#: optional fields: positive whole numbers where present
OPTIONAL_INTS = {"head_dim": 128, "max_position_embeddings": 40960, "intermediate_size": 6144}


def check_shapes(d: dict) -> None:
    """The shape fields of a qwen3 / qwen3_moe config.json, before transformers builds anything: each
    stated, a positive whole number, and consistent (heads divide evenly, an even head dim, top-k
    within the experts). Raises ValueError with one line that says what to set."""
    moe = d.get("model_type") == "qwen3_moe"
    required = {**SHAPE_FIELDS, **(MOE_FIELDS if moe else DENSE_FIELDS)}
    for k, example in required.items():
        if k not in d or d[k] is None:
            raise ValueError(f"model.config has no {k}: add \"{k}\": {example} (the model's value; every "
                             f"{d.get('model_type')} config.json states it)")
    for k, example in {**OPTIONAL_INTS, **required}.items():
        v = d.get(k)
        if v is None and k not in required:
            continue
        top = COUNT_MAX.get(k, SIZE_MAX)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise ValueError(f"model.config: {k} must be a whole number from 1 to {top} (got {v!r}): set "
                             f"\"{k}\": {example} or the model's own value")
    act = d.get("hidden_act", "silu")
    from transformers.activations import ACT2FN

    if not isinstance(act, str) or act not in ACT2FN:
        raise ValueError(f"model.config: hidden_act {act!r} is not an activation transformers has: set "
                         "\"hidden_act\": \"silu\" (or the model's own)")
    heads, kv, hidden = d["num_attention_heads"], d["num_key_value_heads"], d["hidden_size"]
    if heads % kv:
        raise ValueError(f"model.config: num_attention_heads ({heads}) must be a multiple of num_key_value_heads "
                         f"({kv}): set \"num_key_value_heads\" to a divisor of it, e.g. {math.gcd(heads, kv)}")
    head_dim = d.get("head_dim")
    if head_dim is None and hidden % heads:
        raise ValueError(f"model.config: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}) "
                         f"and there is no head_dim: add \"head_dim\": {max(2, hidden // heads // 2 * 2)} or fix "
                         "the sizes")
    head_dim = head_dim or hidden // heads
    if head_dim % 2:
        raise ValueError(f"model.config: head_dim {head_dim} is odd, and RoPE rotates pairs: set \"head_dim\": "
                         f"{head_dim + 1} (or the model's own even value)")
    if moe and d["num_experts_per_tok"] > d["num_experts"]:
        raise ValueError(f"model.config: num_experts_per_tok ({d['num_experts_per_tok']}) exceeds num_experts "
                         f"({d['num_experts']}): set \"num_experts_per_tok\" to at most {d['num_experts']}")
    for k, example in (("rms_norm_eps", "1e-06"), ("rope_theta", 1000000)):
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                              or v == float("inf")):
            raise ValueError(f"model.config: {k} must be a number above 0 (got {v!r}): set \"{k}\": {example} "
                             "or the model's own value")


def args_from_config(d: dict, name: str, hf_name: str = "") -> ModelArgs:
    """stepbench's view of a config (shapes for FLOPs, memory and the report)."""
    if d.get("model_type") in SUPPORTED:
        check_shapes(d)
    try:
        c = hf_config(d)
    except ValueError:
        raise
    except Exception as e:  # transformers' own validation (strict dataclasses) of a field it rejects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model.config: transformers rejects it ({first}): fix that field in the config.json") \
            from None
    if c.model_type not in SUPPORTED:
        raise ValueError(f"model_type '{c.model_type}' is not mapped yet (the hf family runs "
                         f"{', '.join(SUPPORTED)}): use one of those configs")
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type '{rope.get('rope_type')}' is not supported by the hf family: use a config "
                         "with the default RoPE")
    if getattr(c, "use_sliding_window", False):
        raise ValueError("the config uses sliding-window attention, which stepbench's attention backends do not "
                         "run (they are full causal): set use_sliding_window: false")
    theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    moe = c.model_type == "qwen3_moe"
    if moe and (getattr(c, "decoder_sparse_step", 1) != 1 or getattr(c, "mlp_only_layers", None)):
        raise ValueError("Qwen3-MoE configs with dense layers (decoder_sparse_step != 1 or mlp_only_layers) are "
                         "not mapped: use one whose every layer is MoE")
    return ModelArgs(
        name=name, dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads, head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        vocab_size=c.vocab_size, ffn_dim=c.intermediate_size, tied_embeddings=bool(c.tie_word_embeddings),
        rope_theta=float(theta), qk_norm=True, attn_bias=bool(getattr(c, "attention_bias", False)),
        norm_eps=float(c.rms_norm_eps), n_experts=c.num_experts if moe else 0,
        top_k=c.num_experts_per_tok if moe else 0, moe_ffn_dim=c.moe_intermediate_size if moe else 0,
        norm_topk=bool(getattr(c, "norm_topk_prob", True)), hf_name=hf_name,
        hf_config={**c.to_diff_dict(), "model_type": c.model_type},
    )


def from_config(cfg: dict) -> ModelArgs:
    """ModelArgs of a row's ``model`` node (``config``: a mapping or a path; ``plain``: the plain HF
    loop), checked against the rest of the row (``cfg``: the whole composed config)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise ValueError("the hf model family needs transformers: pip install 'stepbench[hf]'")
    node = cfg.get("model") or {}
    d = _config_dict(node.get("config"))
    plain = bool(node.get("plain", False))
    if plain:
        attn, ac = (cfg.get("attn") or {}), (cfg.get("ac") or {})
        if attn.get("name") not in PLAIN_KERNELS and attn.get("name") not in PLAIN_IMPLEMENTATIONS:
            raise ValueError(f"model.plain=true runs transformers' own attention: use +attn=sdpa (torch picks "
                             f"the kernel), +attn=fa2 or +attn=cudnn (sdpa on that kernel only) or +attn=fa3 "
                             f"(transformers' flash_attention_3); not {attn.get('name')}")
        if ac.get("name") not in ("none", "recompute") or ac.get("mode", "full") != "full":
            raise ValueError("model.plain=true uses transformers' gradient checkpointing: use +ac=recompute or "
                             "+ac=none")
        if cfg.get("packing", "single") != "single":
            raise ValueError("model.plain=true runs one document per micro-batch (transformers' sdpa path has no "
                             "packed documents): use packing=single")
    adapter = cfg.get("adapter") or {}
    if d.get("model_type") == "qwen3_moe" and adapter.get("name") == "lora" \
            and adapter.get("experts", "grouped") in ("grouped", True):
        raise ValueError("adapter.experts=grouped adapts stepbench's own expert module; transformers' experts "
                         "take adapter.experts=peft (peft's target_parameters) or adapter.experts=none")
    base = str(node.get("flavour") or "custom")
    if base in ("custom", "auto", "None"):
        base = str(d.get("_name_or_path") or d.get("model_type"))
    return args_from_config(d, base + (PLAIN_SUFFIX if plain else HF_SUFFIX), str(node.get("hf_name") or ""))


# ------------------------------------------------------------------ transformers inside stepbench
def stepbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function interface -> the bound stepbench backend on packed tensors."""
    meta = kwargs.get("stepbench_meta")
    if meta is None:
        raise RuntimeError("the stepbench attention ran without the micro-batch's documents (stepbench_meta)")
    if scaling is not None and abs(scaling - query.shape[-1] ** -0.5) > 1e-9:
        raise ValueError(f"attention scaling {scaling} is not 1/sqrt(head_dim): stepbench's backends use the "
                         "default scaling")
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, heads, head_dim]
    return module.backend(q, k, v, meta).unsqueeze(0), None


_ADAPTED: dict[type, type] = {}


def _adapted(base: type) -> type:
    """A subclass of a transformers decoder layer called as a stepbench block: ``(x, rope, meta)``
    with the packed documents as one sequence ``x`` of ``[1, tokens, hidden]`` and transformers'
    ``(cos, sin)`` of ``[1, tokens, head_dim]``."""
    if base not in _ADAPTED:
        def forward(self, x, rope, meta):
            out = base.forward(self, x, position_embeddings=rope, stepbench_meta=meta)
            return out[0] if isinstance(out, tuple) else out

        _ADAPTED[base] = type(f"Stepbench{base.__name__}", (base,), {"forward": forward})
    return _ADAPTED[base]


def _from_config(config, attn_implementation: str):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    except TypeError:  # older transformers: torch_dtype
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                torch_dtype=torch.float32)


class HFCausalLM(CausalLM):
    """A transformers causal LM with stepbench's interface: packed ``[tokens, hidden]`` blocks,
    bound attention backend, per-block AC runner, chunked log-prob head."""

    casts_adapters = False  # transformers' layers call peft's forward, which computes fp32 factors in fp32
    casts_weights = False  # transformers' layers use their weights as they are: FSDP2's mixed precision casts them

    def __init__(self, a: ModelArgs):
        nn.Module.__init__(self)
        from transformers import AttentionInterface

        AttentionInterface.register("stepbench", stepbench_attention)
        lm = _from_config(hf_config(a.hf_config), "stepbench")
        self.args = a
        self.embed_tokens = lm.model.embed_tokens
        self.rotary = Rotary(a.head_dim, a.rope_theta, a.partial_rotary)  # the default RoPE, as transformers'
        self.layers = lm.model.layers
        self.norm = lm.model.norm
        self.lm_head = None if a.tied_embeddings else lm.lm_head
        self.block_runner = run_block
        self.head_budget_mib = 512
        self.head_compiled = False
        for layer in self.layers:
            layer.__class__ = _adapted(type(layer))
            layer.self_attn.stepbench_attention = True
            layer.self_attn.backend = None

    def hidden_states(self, input_ids, position_ids, meta):
        h = self.embed_tokens(input_ids).unsqueeze(0)  # the packed documents as one sequence
        cos, sin = self.rotary(position_ids, h.dtype)  # [tokens, 1, head_dim] -> transformers' [1, tokens, head_dim]
        rope = (cos[:, 0].unsqueeze(0), sin[:, 0].unsqueeze(0))
        for block in self.layers:
            h = self.block_runner(block, h, rope, meta)
        return self.norm(h)[0]


#: the attention a plain HF row may name: transformers' ``sdpa`` implementation either way, with
#: torch's choice of kernel (``sdpa``: cuDNN attention on Hopper) or restricted to one kernel, the
#: one a stepbench row of that name runs (``fa2``: torch's vendored FlashAttention-2, as the native
#: ``fa2`` backend without the flash_attn package; ``cudnn``), so a published FA2 row has a plain HF
#: peer with the same attention kernel
PLAIN_KERNELS = {"sdpa": None, "fa2": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}
#: attention a plain HF row runs through another transformers implementation than sdpa: ``fa3``:
#: transformers' ``flash_attention_3`` (the flash_attn_interface module, which the FA3 build
#: installs), what a transformers user with FA3 installed picks
PLAIN_IMPLEMENTATIONS = {"fa3": "flash_attention_3"}


class PlainHFCausalLM(nn.Module):
    """What a plain transformers loop runs: the model's own forward (sdpa attention, its gradient
    checkpointing when an AC strategy other than ``none`` is applied), full fp32 logits, log-softmax.
    The row's attention backend is bound to the model itself (``backend``): its name picks the
    kernel transformers' sdpa calls may use (:data:`PLAIN_KERNELS`) or another transformers
    attention implementation (:data:`PLAIN_IMPLEMENTATIONS`)."""

    stepbench_attention = True  # bind_attention sets self.backend: the row's attention choice

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.args = a
        self._backend = None
        self.lm = _from_config(hf_config(a.hf_config), "sdpa")
        self.layers = self.lm.model.layers  # FSDP2 shards these (each decoder layer)
        self.block_runner = run_block
        self.own_checkpointing = True  # +ac=recompute turns on transformers' gradient checkpointing
        self.head_budget_mib = 512

    def init_buffers(self) -> None:
        """transformers' RoPE tables (``inv_freq``) after materialisation from the meta device
        (the default RoPE: the only kind the family accepts)."""
        for name, buf in self.named_buffers():
            if name.endswith("inv_freq"):
                with torch.no_grad():
                    buf.copy_(rope_inv_freq(self.args.head_dim, self.args.rope_theta, buf.device))

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, backend) -> None:
        """Bind the row's attention: switch transformers' implementation where its name asks for
        one other than sdpa (and back)."""
        self._backend = backend
        impl = PLAIN_IMPLEMENTATIONS.get(self.attn_name, "sdpa")
        if self.lm.config._attn_implementation != impl:
            self.lm.set_attn_implementation(impl)

    @property
    def attn_name(self) -> str:
        """The bound attention's name (``sdpa`` before one is bound)."""
        return getattr(self._backend, "name", "sdpa")

    def attention_provider(self) -> str:
        """What the row's attention is: transformers' sdpa and the kernels it may use, or the
        other implementation it runs."""
        impl = PLAIN_IMPLEMENTATIONS.get(self.attn_name)
        if impl:
            from plugins.attention.common import package_version

            version = package_version("flash_attn_3", "flash-attn-3")
            return f"transformers {impl} -> flash_attn_interface (flash_attn_3 {version})"
        kernel = PLAIN_KERNELS.get(self.attn_name)
        return (f"transformers sdpa_attention_forward -> torch {torch.__version__} scaled_dot_product_attention"
                + (f" ({kernel} backend only)" if kernel else " (torch's pick of kernel)"))

    def kernel(self):
        """A context that holds transformers' sdpa calls to the row's kernel (none for ``sdpa``).
        The forward runs in one; with gradient checkpointing each layer's recompute in backward
        enters another (torch's checkpoint ``context_fn``), so it runs the same kernel."""
        kernel = PLAIN_KERNELS.get(self.attn_name)
        if kernel is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, kernel))

    def forward(self, input_ids, position_ids, meta, targets):
        if meta is not None and len(meta.cu_seqlens_host) != 2:
            raise ValueError("model.plain=true runs one document per micro-batch: use packing=single")
        checkpointing = self.block_runner is not run_block  # +ac=recompute: transformers' own checkpointing
        if checkpointing and not self.lm.is_gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
                "use_reentrant": False, "context_fn": lambda: (self.kernel(), self.kernel())})
        with self.kernel():
            logits = self.lm(input_ids=input_ids.unsqueeze(0), position_ids=position_ids.unsqueeze(0),
                             use_cache=False).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            ent = -(logp.exp() * logp).sum(-1)
        return lp, ent


def build(a: ModelArgs) -> nn.Module:
    return PlainHFCausalLM(a) if a.name.endswith(PLAIN_SUFFIX) else HFCausalLM(a)


def implementation(a: ModelArgs) -> str:
    """Who runs the model, for the report: "plain HF" (transformers' own loop) or "hf" (transformers'
    modules with stepbench's plugins)."""
    return "plain HF" if a.name.endswith(PLAIN_SUFFIX) else "hf"


FAMILY = ModelFamily("hf", {}, build, "Hugging Face transformers models (model=hf model.config=PATH; "
                     "model=hf_qwen3_0_6b ...; model.plain=true: the plain HF loop)", from_config=from_config,
                     implementation=implementation, own_loop=lambda a: a.name.endswith(PLAIN_SUFFIX),
                     casts_weights=False, casts_adapters=False,
                     fuses_projections=False)


@hookimpl
def stepbench_register_models(register):
    register("hf", FAMILY, doc=FAMILY.doc)
