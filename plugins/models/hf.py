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
import functools
import hashlib
import json
import logging
import math
from pathlib import Path

import torch
from torch import nn

from core import hookimpl
from core.contracts import ModelFamily
from core.models.common import CausalLM, ModelArgs, rope_inv_freq, run_block

HF_SUFFIX, PLAIN_SUFFIX = " (hf)", " (plain HF)"


def _canonical(d: dict) -> str:
    """A config's fields as one string (sorted keys): two configs are the same model when equal."""
    return json.dumps(d, sort_keys=True, default=str)


@functools.lru_cache(maxsize=1)
def _entries() -> dict[str, tuple[str, str, str]]:
    """hf_name -> (the conf/model entry, its config as :func:`_canonical`, its flavour) of the
    committed hf entries with a config mapping. A row whose config is none of these (an entry with a field
    overridden, a config.json of one's own) is named with its config's fingerprint, so it is never
    taken for (or skipped as) another model's row; ``model.hf_name`` naming an entry whose config
    differs is refused."""
    from omegaconf import OmegaConf

    from core.options import conf_dir

    out = {}
    for f in sorted((conf_dir() / "model").glob("*.yaml")):
        try:
            node = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
        except Exception:  # noqa: BLE001 - an entry that does not load is refused where it is chosen
            continue
        if isinstance(node, dict) and node.get("family") == "hf" and isinstance(node.get("config"), dict):
            out[str(node.get("hf_name") or f.stem)] = (f.stem, _canonical(dict(node["config"])),
                                                        str(node.get("flavour") or ""))
    return out


def _check_model_type(model_type) -> None:
    """ValueError (one line) unless a config's ``model_type`` is a name."""
    if model_type is None:
        raise ValueError("model.config has no model_type: add the model's own, e.g. \"model_type\": \"llama\"")
    if not isinstance(model_type, str) or not model_type.strip():
        raise ValueError(f"model.config's model_type is {str(model_type)[:40]!r}, not a name: give the model's own, "
                         "e.g. \"model_type\": \"llama\"")


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
    if p.exists() and not p.is_file():
        raise ValueError(f"model.config={value} is not a regular file (a device, a FIFO, ...): pass a config.json path")
    if p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8-sig"), object_pairs_hook=_no_duplicate_keys)  # BOM dropped
        except DuplicateKey as e:
            raise ValueError(f"model.config={value}: the field {e} is given twice (JSON keeps the last silently): "
                             "keep one") from None
        except (OSError, ValueError) as e:  # ValueError: bad JSON, bad UTF-8, an integer of thousands of digits
            why = str(e).splitlines()[0].split(";")[0] if str(e) else type(e).__name__
            raise ValueError(f"model.config={value}: not a readable config.json ({why}): pass a model's "
                             "config.json (a JSON object)") from None
        if not isinstance(d, dict):
            raise ValueError(f"model.config={value}: not a JSON object (a config.json holds {{\"model_type\": ..., "
                             "\"hidden_size\": ...}): pass a model's config.json") from None
        return d
    if str(value).count("/") == 1 and not str(value).startswith((".", "/", "~")):
        import os

        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
            raise ValueError(f"model.config={value}: no such file, and this machine is offline (HF_HUB_OFFLINE): pass "
                             "a local config.json path")
        import socket

        try:  # a machine that cannot reach the hub is told at once (the hub client retries for ~30 s)
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
        except OSError:
            raise ValueError(f"model.config={value}: no such file, and huggingface.co cannot be reached from here: "
                             "pass a local config.json path") from None
        try:  # a hub id: only the config is fetched, never weights; its retries' log lines held back
            from transformers import AutoConfig

            os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
            logging.disable(logging.WARNING)
            try:
                with quiet_transformers():
                    return AutoConfig.from_pretrained(str(value)).to_dict()
            finally:
                logging.disable(logging.NOTSET)
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
    _check_model_type(model_type)
    try:
        return AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError) as e:
        why = " ".join(str(e).split())[:240] if str(e) else type(e).__name__
        raise ValueError(f"model.config: transformers cannot build this {model_type} config ({type(e).__name__}: "
                         f"{why}): fix that field in the config.json") from None


#: the shape fields every config must state (transformers' defaults are another model's), with
#: Llama-3.2-1B's values as the example of what to type
SHAPE_FIELDS = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "vocab_size": 128256}
#: the largest size a shape field may have (a tensor dimension torch's kernels index with 32 bits)
SIZE_MAX = 2**31 - 1
#: the largest count of layers, heads and experts a config may state (the largest published models
#: have about a hundred layers and a few hundred experts; building millions of modules hangs)
COUNT_MAX = {"num_hidden_layers": 1024, "num_attention_heads": 4096, "num_key_value_heads": 4096,
             "num_experts": 4096, "num_local_experts": 4096, "n_routed_experts": 4096, "num_experts_per_tok": 4096,
             "n_shared_experts": 4096, "first_k_dense_replace": 1024}
#: optional fields: positive whole numbers where present (``None`` allowed)
OPTIONAL_INTS = {"num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
                 "intermediate_size": 8192, "moe_intermediate_size": 768, "num_experts": 128,
                 "num_local_experts": 32, "n_routed_experts": 128, "num_experts_per_tok": 8, "n_shared_experts": 1,
                 "sliding_window": 4096, "max_window_layers": 28}
#: fields whose value 0 is meaningful (a count that may be zero)
ZERO_OK = {"first_k_dense_replace": 1}
#: config fields that change the logits after the final norm and LM head, which stepbench's chunked
#: log-prob head does not do (value that means "off")
HEAD_FIELDS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0,
               "output_multiplier_scale": 1.0}


def _whole(v, low: int, top: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and low <= v <= top


def check_shapes(d: dict) -> None:
    """The shape fields of a config.json, before transformers builds anything: each stated, a
    positive whole number, and consistent (heads divide evenly, an even head dim, top-k within the
    experts). Raises ValueError with one line that says what to set."""
    text = d.get("text_config")
    if isinstance(text, dict) and d.get("hidden_size") is None:  # llava, mllama, gemma3, qwen2_vl, ...
        inner = text.get("model_type")
        raise ValueError(f"model.config is a composite (multimodal) config (model_type {d.get('model_type')!r}) whose "
                         f"language model is its text_config{f' (model_type {inner!r})' if inner else ''}: save "
                         "text_config as a config.json of its own and pass that")
    for k, example in SHAPE_FIELDS.items():
        if k not in d or d[k] is None:
            raise ValueError(f"model.config has no {k}: add \"{k}\": {example} (the model's value; a "
                             "decoder's config.json states it)")
    for k, example in {**OPTIONAL_INTS, **ZERO_OK, **SHAPE_FIELDS}.items():
        v = d.get(k)
        if v is None and k not in SHAPE_FIELDS:
            continue
        low, top = (0 if k in ZERO_OK else 1), COUNT_MAX.get(k, SIZE_MAX)
        if not _whole(v, low, top):
            if isinstance(v, float) and v.is_integer() and low <= v <= top:  # 16.0, as some exporters write
                example = int(v)
            raise ValueError(f"model.config: {k} must be a whole number from {low} to {top} (got {v!r}): set "
                             f"\"{k}\": {example} or the model's own value")
    act = d.get("hidden_act", d.get("hidden_activation", "silu"))
    from transformers.activations import ACT2FN

    if not isinstance(act, str) or act not in ACT2FN:
        raise ValueError(f"model.config: hidden_act {act!r} is not an activation transformers has: set "
                         "\"hidden_act\": \"silu\" (or the model's own)")
    heads, hidden = d["num_attention_heads"], d["hidden_size"]
    kv = d.get("num_key_value_heads") or heads
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
    experts = next((d[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if d.get(k)), None)
    if experts and d.get("num_experts_per_tok") and d["num_experts_per_tok"] > experts:
        raise ValueError(f"model.config: num_experts_per_tok ({d['num_experts_per_tok']}) exceeds the {experts} "
                         f"experts: set \"num_experts_per_tok\" to at most {experts}")
    if (d.get("first_k_dense_replace") or 0) > d["num_hidden_layers"]:
        raise ValueError(f"model.config: first_k_dense_replace ({d['first_k_dense_replace']}) exceeds "
                         f"num_hidden_layers ({d['num_hidden_layers']}): set it to at most that")
    # rms_norm_eps below 1 (a norm's epsilon); rope_theta at least 1 (below it, the rotary
    # frequencies theta^(-2i/d) grow with i instead of falling: the loss is NaN at step 0)
    for k, example, lo, hi in (("rms_norm_eps", "1e-06", 0.0, 1.0), ("rope_theta", 1000000, 1.0, 1e30)):
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v
                              or v == float("inf")):
            raise ValueError(f"model.config: {k} must be a number above 0 (got {v!r}): set \"{k}\": {example} "
                             "or the model's own value")
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"model.config: {k} {v!r} is outside {lo:g}..{hi:g}, no model's value: set \"{k}\": "
                             f"{example} or the model's own value")
    for field in ("rope_parameters", "rope_scaling"):  # transformers 5 keeps rope_theta in rope_parameters
        rope = d.get(field)
        if not isinstance(rope, dict):
            continue
        for k, v in rope.items():
            for x in v if isinstance(v, list) else [v]:
                if _real(x) and not math.isfinite(x):
                    raise ValueError(f"model.config: {field}.{k} is {x!r}, not a finite number: set the model's own "
                                     "value")
        theta, factor = rope.get("rope_theta"), rope.get("factor")
        if _real(theta) and not 1.0 <= theta <= 1e30:
            raise ValueError(f"model.config: {field}.rope_theta {theta!r} is outside 1..1e30, no model's value: set "
                             "it to the model's own (e.g. 500000.0)")
        if _real(factor) and not factor > 0:
            raise ValueError(f"model.config: {field}.factor {factor!r} must be above 0: set the model's own (e.g. 8.0)")
    prf = d.get("partial_rotary_factor")
    if _real(prf) and 0 < prf <= 1 and int(head_dim * prf) < 2:
        raise ValueError(f"model.config: partial_rotary_factor {prf!r} of head_dim {head_dim} rotates no pair of "
                         "features: set it so that head_dim * factor is at least 2 (e.g. 0.5)")


#: config fields that must be above 0 where present (None allowed), with an example value
POSITIVE_NUMBERS = {"query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "decoder_sparse_step": 1,
                    "router_aux_loss_coef": 0.001, "routed_scaling_factor": 1.0, "rope_local_base_freq": 10000.0,
                    "sliding_window_pattern": 6, "n_group": 1, "topk_group": 1, "swiglu_limit": 7.0,
                    "initializer_range": 0.02}
#: fields whose transformers default is another model's size: a config that leaves them out would
#: silently get it (transformers' Llama intermediate_size is 11008), so each must be stated where
#: the model type has a default for it
STATED = ("intermediate_size", "num_key_value_heads", "head_dim", "moe_intermediate_size", "num_experts",
          "num_local_experts", "n_routed_experts", "num_experts_per_tok")


def _real(x) -> bool:
    """A JSON number (not a bool, which Python counts as an int)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class DuplicateKey(ValueError):
    """A config.json object that names a field twice (the message is the field)."""


def _no_duplicate_keys(pairs: list) -> dict:
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise DuplicateKey(repr(k))
        seen.add(k)
    return dict(pairs)


#: config.json fields of a checkpoint's storage, which a benchmark from random weights does not use:
#: accepted with these values (a checkpoint's own), anything else refused
STORAGE_DTYPES = ("bfloat16", "float16", "float32", "auto", None)


def check_fields(d: dict, cls) -> None:
    """Fields past the shapes, before transformers builds anything: sizes whose default is another
    model's stated, positive numbers, token ids within the vocabulary, layer indices within the
    layers, a rotary fraction in (0, 1]."""
    import inspect

    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        params = {}
    aliases = getattr(cls, "attribute_map", {}) or {}
    for k in STATED:
        if k in aliases:  # another name of a field (num_local_experts -> num_experts): that one is checked
            continue
        spelled = {k, *(a for a, v in aliases.items() if v == k)}
        default = params[k].default if k in params else None  # a default derived from others (head_dim): None
        if not spelled & set(d) and default not in (None, inspect.Parameter.empty):
            raise ValueError(f"model.config has no {k}: add the model's value (transformers' {d['model_type']} "
                             f"default, {default!r}, is another model's)")
    for k, example in POSITIVE_NUMBERS.items():
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
            raise ValueError(f"model.config: {k} must be a number above 0 (got {v!r}): set \"{k}\": {example} or "
                             "the model's own value")
    v = d.get("partial_rotary_factor")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1):
        raise ValueError(f"model.config: partial_rotary_factor must be above 0 and at most 1 (got {v!r}): set "
                         "\"partial_rotary_factor\": 0.5 or the model's own value")
    if d.get("quantization_config") is not None:
        raise ValueError("model.config has a quantization_config: stepbench trains bf16 weights with fp32 masters "
                         "(a quantized checkpoint's training step is not what it measures): remove the field")
    for k in ("torch_dtype", "dtype"):
        if d.get(k) not in STORAGE_DTYPES:
            raise ValueError(f"model.config: {k} {d.get(k)!r} is not a checkpoint dtype stepbench takes (it trains "
                             f"bf16 with fp32 masters whatever the checkpoint's): set \"{k}\": \"bfloat16\" or leave it out")
    vocab = d["vocab_size"]
    if vocab < 2:
        raise ValueError(f"model.config: vocab_size {vocab} leaves nothing to predict: set the model's own (e.g. 151936)")
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ids = d.get(k)
        for i in ids if isinstance(ids, list) else [ids]:
            if i is not None and not _whole(i, 0, vocab - 1):
                raise ValueError(f"model.config: {k} {i!r} is not a token of the {vocab}-token vocabulary: set it "
                                 f"below vocab_size, or null")
    dropout = d.get("attention_dropout")
    if dropout not in (None, 0, 0.0):
        raise ValueError(f"model.config: attention_dropout {dropout!r}: stepbench's attention backends run no dropout "
                         "(a benchmark step measures none): set \"attention_dropout\": 0.0")
    experts = next((d[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if d.get(k)), None)
    groups, top_groups = d.get("n_group"), d.get("topk_group")
    if experts and _whole(groups, 1, experts) and experts % groups:
        raise ValueError(f"model.config: n_group ({groups}) must divide the {experts} routed experts: set \"n_group\" "
                         f"to a divisor, e.g. 1")
    if _whole(groups, 1, 4096) and _whole(top_groups, 1, 4096) and top_groups > groups:
        raise ValueError(f"model.config: topk_group ({top_groups}) exceeds n_group ({groups}): set \"topk_group\" to "
                         f"at most {groups}")
    layers = d["num_hidden_layers"]
    for k in ("mlp_only_layers",):
        v = d.get(k) or []
        if not isinstance(v, list) or any(not _whole(i, 0, layers - 1) for i in v):
            raise ValueError(f"model.config: {k} must list layer indices from 0 to {layers - 1} (got {v!r})")
    types = d.get("layer_types")
    if types is not None and (not isinstance(types, list) or len(types) != layers):
        raise ValueError(f"model.config: layer_types must list one type per layer ({layers}), got "
                         f"{len(types) if isinstance(types, list) else repr(types)}")


class _Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet_transformers():
    """transformers' log lines held back (a refusal is one line); yields the warnings it logged."""
    import warnings

    log = logging.getLogger("transformers")
    handlers, propagate, cap = log.handlers[:], log.propagate, _Captured()
    log.handlers, log.propagate = [cap], False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield cap.messages
    finally:
        log.handlers, log.propagate = handlers, propagate


def causal_lm_class(config):
    """transformers' causal-LM class for ``config``, refused (ValueError, one line) where stepbench
    cannot run it: no causal LM, or attention that bypasses transformers' attention registry."""
    from transformers import AutoModelForCausalLM

    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if cls is None:
        raise ValueError(f"model_type '{config.model_type}' has no causal LM in transformers "
                         f"{_tf_version()}: use a decoder-only model's config.json (llama, qwen2, gemma3_text, ...)")
    if not getattr(cls, "_supports_attention_backend", False):
        raise ValueError(f"{cls.__name__} computes its attention itself (it bypasses transformers' attention "
                         "registry), so no stepbench backend can run it: use another model (one whose attention goes "
                         "through the registry: llama, qwen2, qwen3, gemma3_text, ...)")
    for k, off in HEAD_FIELDS.items():
        v = getattr(config, k, off)
        if v is not None and v != off:
            raise ValueError(f"{cls.__name__} changes its logits after the LM head ({k}={v}), which stepbench's "
                             f"chunked log-prob head does not: set \"{k}\": {json.dumps(off)} in the config to time "
                             "the model without it")
    return cls


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def _attention_of(layer: nn.Module):
    """The attention module of a decoder layer: the one transformers gives a ``scaling``."""
    for m in layer.modules():
        if hasattr(m, "scaling") and hasattr(m, "head_dim") and m is not layer:
            return m
    raise ValueError(f"{type(layer).__name__} has no attention module with a scaling and head_dim (transformers' "
                     "convention): stepbench reads a decoder-only causal LM's attention from it (for its FLOPs and "
                     "memory, in its own step and in the plain loop alike), so this model cannot run")


def _experts_count(c) -> tuple[int, int]:
    """(routed experts, experts per token) of a config, (0, 0) for a dense one."""
    n = next((getattr(c, k) for k in ("num_experts", "num_local_experts", "n_routed_experts")
              if getattr(c, k, None)), 0)
    return int(n or 0), int(getattr(c, "num_experts_per_tok", 0) or 0)


def tree_facts(c, lm: nn.Module) -> dict:
    """What a model built on the meta device says of itself: its decoder layers' attention (head
    dim, sliding window, scale, soft-capping, sinks), the matmul weights a token goes through in each
    layer, the LoRA targets (linear layers and 3-D expert weights, routers excluded) and every
    parameter. ValueError (one line) for a model stepbench cannot run."""
    base = getattr(lm, lm.base_model_prefix, None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not isinstance(getattr(base, "embed_tokens", None), nn.Embedding):
        raise ValueError(f"{type(lm).__name__} keeps no decoder layers at model.layers with an embed_tokens "
                         "embedding (transformers' decoder layout): stepbench measures decoder-only causal LMs laid "
                         "out so (in its own step and in the plain loop alike), and this one cannot run")
    n_experts, top_k = _experts_count(c)
    windows, features, head_dims, mm, lora, experts = [], set(), set(), [], {}, {}
    for layer in layers:
        att = _attention_of(layer)
        head_dims.add(int(att.head_dim))
        if "sliding_window" in vars(att):
            w = att.sliding_window
        else:  # a model that passes its config's window to every layer (Mistral, Phi-3)
            w = getattr(c, "sliding_window", None) if "sliding_window" in _call_names(type(att)) else None
        windows.append(int(w or 0))
        if w:
            features.add("window")
        if abs(float(att.scaling) - att.head_dim ** -0.5) > 1e-9 * att.head_dim ** -0.5:
            features.add("scale")
        if getattr(att, "attn_logit_softcapping", None):
            features.add("softcap")
        if isinstance(getattr(att, "sinks", None), nn.Parameter):
            features.add("sinks")
        total = 0.0
        for name, p in layer.named_parameters():
            in_experts = ".experts." in f".{name}" or name.startswith("experts.")
            if p.dim() == 3 or (p.dim() == 2 and in_experts):
                if not (n_experts and top_k):
                    raise ValueError(f"{type(layer).__name__} has expert weights ({name}) but the config states no "
                                     "num_experts / num_experts_per_tok: add the model's values")
                total += p.numel() * top_k / n_experts
                if p.dim() == 3:
                    key = name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]  # experts.gate_up_proj
                    experts[key] = experts.get(key, 0) + p.shape[0] * (p.shape[1] + p.shape[2])
            elif p.dim() == 2:
                total += p.numel()
        for name, m in layer.named_modules():
            if isinstance(m, nn.Linear) and not (n_experts and m.out_features == n_experts) \
                    and ".experts." not in f".{name}.":
                leaf = name.rsplit(".", 1)[-1]
                lora[leaf] = lora.get(leaf, 0) + m.in_features + m.out_features
        mm.append(int(round(total)))
    if len(head_dims) != 1:
        raise ValueError(f"the model's layers have head dims {sorted(head_dims)}: stepbench runs one head dim per "
                         "model; use model.plain=true")
    n_params = sum(p.numel() for p in lm.parameters())
    return {"head_dim": head_dims.pop(), "windows": tuple(windows), "features": tuple(sorted(features)),
            "layer_mm_params": tuple(mm), "lora_dims": tuple(sorted(lora.items())),
            "expert_dims": tuple(sorted(experts.items())), "n_params": n_params,
            "tied": lm.get_output_embeddings() is None or lm.get_output_embeddings().weight is base.embed_tokens.weight}


def _call_names(cls) -> set:
    """Names a module's forward reads (to tell whether attention passes its config's window)."""
    import inspect

    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return set()
    return {"sliding_window"} if "sliding_window" in src else set()


def meta_model(c, attn_implementation: str = "stepbench"):
    """The transformers causal LM of ``c`` built on the meta device (no memory)."""
    from transformers import AttentionInterface

    AttentionInterface.register("stepbench", stepbench_attention)
    with torch.device("meta"):
        return _from_config(c, attn_implementation)


def args_from_config(d: dict, name: str, hf_name: str = "") -> ModelArgs:
    """stepbench's view of a config: shapes from the config, and FLOPs, memory and LoRA sizes from
    the module tree of the model built on the meta device (no per-family tables)."""
    from transformers import CONFIG_MAPPING

    _check_model_type(d.get("model_type"))
    if d["model_type"] not in CONFIG_MAPPING:
        raise ValueError(f"transformers {_tf_version()} cannot build model_type '{d['model_type']}' (it knows no such "
                         "model): check model_type (a decoder-only model transformers has, e.g. llama, qwen2, "
                         "gemma3_text, gpt_oss)")
    cls = CONFIG_MAPPING[d["model_type"]]
    aliases = getattr(cls, "attribute_map", {}) or {}
    named = {**{k: d[v] for k, v in aliases.items() if v in d and k not in d}, **d}  # n_head -> heads
    check_shapes(named)
    with quiet_transformers() as said:
        check_fields(named, cls)
        d = {**{k: None for k in ("pad_token_id", "bos_token_id", "eos_token_id") if k not in d}, **d}
        try:
            c = hf_config(d)
        except ValueError:
            raise
        except Exception as e:  # transformers' own validation (strict dataclasses) of a field it rejects
            text = " ".join(ln.strip() for ln in str(e).strip().splitlines() if ln.strip()) or type(e).__name__
            raise ValueError(f"model.config: transformers rejects it ({text[:240]}): fix that field in the "
                             "config.json") from None
        bad = next((m for m in said if " must be " in m), None)
        if bad:  # transformers' validation says a field is out of range and would go on with it
            said_it = next(s for s in bad.replace("Model config: ", "").split(". ") if " must be " in s).strip()
            raise ValueError(f"model.config: {said_it.rstrip('.')}: fix that field (or set it to null)")
        causal_lm_class(c)
        try:
            lm = meta_model(c)
        except ValueError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"transformers cannot build this {c.model_type} config ({type(e).__name__}: {first}): "
                             "fix the config.json") from None
    f = tree_facts(c, lm)
    n_experts, top_k = _experts_count(c)
    heads = c.num_attention_heads
    ffn = getattr(c, "intermediate_size", None) or 0
    moe_ffn = getattr(c, "moe_intermediate_size", None) or ffn
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0))
    return ModelArgs(
        name=name, dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or heads, head_dim=f["head_dim"],
        vocab_size=c.vocab_size, ffn_dim=int(ffn or 4 * c.hidden_size), tied_embeddings=bool(f["tied"]),
        rope_theta=float(theta or 10000.0), qk_norm=False, attn_bias=bool(getattr(c, "attention_bias", False)),
        norm_eps=float(getattr(c, "rms_norm_eps", 1e-6) or 1e-6), n_experts=n_experts, top_k=top_k,
        moe_ffn_dim=int(moe_ffn) if n_experts else 0, n_shared_experts=int(getattr(c, "n_shared_experts", 0) or 0),
        first_dense_layers=int(getattr(c, "first_k_dense_replace", 0) or 0) if n_experts else 0,
        norm_topk=bool(getattr(c, "norm_topk_prob", True)), hf_name=hf_name,
        hf_config={**c.to_diff_dict(), "model_type": c.model_type},
        layer_mm_params=f["layer_mm_params"], windows=f["windows"], attn_features=f["features"],
        n_params=f["n_params"], lora_dims=f["lora_dims"], expert_dims=f["expert_dims"],
    )


#: fields transformers takes and turns into others (rope_theta and rope_scaling into rope_parameters)
LEGACY_FIELDS = frozenset({"rope_theta", "rope_scaling", "torch_dtype", "dtype", "architectures", "_name_or_path",
                           "transformers_version"})


def _read_by_model(cls) -> set:
    """The config fields the model type's code takes: what its modeling module reads (``config.x``,
    ``getattr(config, "x"``), and every name its configuration module and transformers' RoPE
    utilities spell out (a field taken from ``**kwargs`` and turned into another:
    ``partial_rotary_factor`` into ``rope_parameters``, gemma3's ``sliding_window_pattern``)."""
    import importlib
    import inspect
    import re

    names: set = set()
    for name in (cls.__module__.replace(".configuration_", ".modeling_"), cls.__module__,
                 "transformers.modeling_rope_utils"):
        try:
            src = inspect.getsource(importlib.import_module(name))
        except (ImportError, OSError, TypeError):
            continue
        names |= set(re.findall(r"config\.(\w+)", src)) | set(re.findall(r"[\"'](\w+)[\"']", src))
    return names


def unknown_fields(d: dict) -> None:
    """A config written in stepbench's YAML (a conf/model/ entry, ``+model.config.KEY=`` on the command
    line) names only fields its transformers config class has: a misspelt one (``num_hidden_layer``)
    would be kept and ignored. A config.json file is not checked so (real ones carry fields of their
    own: architectures, auto_map, a trainer's keys)."""
    import inspect

    from transformers import CONFIG_MAPPING

    mt = d.get("model_type")
    cls = CONFIG_MAPPING[mt] if isinstance(mt, str) and mt in CONFIG_MAPPING else None
    if cls is None:  # said where the model type is checked
        return
    with quiet_transformers():
        known = set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}) or {}) | LEGACY_FIELDS
    try:
        known |= set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        pass
    bad = sorted(set(d) - known)
    if bad:  # a field the config class keeps as an attribute and the modeling code reads (head_dim of qwen3_moe)
        known |= _read_by_model(cls)
        bad = sorted(set(d) - known)
    if bad:
        from core.options import nearest_name

        near = nearest_name(bad[0], sorted(known))
        raise ValueError(f"model.config.{bad[0]} is not a field of transformers' {d['model_type']} config (it would be "
                         f"ignored): {f'did you mean model.config.{near}? ' if near else ''}fix or drop it")


def from_config(cfg: dict) -> ModelArgs:
    """ModelArgs of a row's ``model`` node (``config``: a mapping or a path; ``plain``: the plain HF
    loop), checked against the rest of the row (``cfg``: the whole composed config)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise ValueError("the hf model family needs transformers: pip install 'stepbench[hf]'")
    node = cfg.get("model") or {}
    d = _config_dict(node.get("config"))
    if isinstance(node.get("config"), dict):  # a conf/model/ entry's fields, and any +model.config.KEY typed
        unknown_fields(d)
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
    base = str(node.get("flavour") or "custom")
    hf_name = str(node.get("hf_name") or "")
    entries, canonical = _entries(), _canonical(d)
    if hf_name and hf_name not in entries:
        raise ValueError(f"model.hf_name={hf_name} names no model of conf/model/, and a config's rows are named by the "
                         "config (its name and fingerprint): leave model.hf_name out")
    if hf_name and entries[hf_name][1] != canonical:
        if entries[hf_name][2] != base:  # another entry's name on this config
            raise ValueError(f"model.hf_name={hf_name} names conf/model/{entries[hf_name][0]}.yaml, whose config this "
                             f"one is not: use model={entries[hf_name][0]}, or leave model.hf_name out")
        hf_name = ""  # the entry with a field changed: another model, named by its fingerprint below
    same = next((e for e in entries.values() if e[1] == canonical), None)
    if same is not None and base not in ("custom", "auto", "None") and base != same[2]:
        raise ValueError(f"model.flavour={base} renames conf/model/{same[0]}.yaml's model (its rows are named "
                         f"{same[2]!r}, and a row is keyed by that name): leave model.flavour out")
    if base in ("custom", "auto", "None"):
        base = str(d.get("_name_or_path") or d.get("model_type"))
    if canonical not in {c for _, c, _ in entries.values()}:  # not a committed entry's config as it is
        base += f" [config {hashlib.sha1(canonical.encode()).hexdigest()[:8]}]"
    args = args_from_config(d, base + (PLAIN_SUFFIX if plain else HF_SUFFIX), hf_name)
    adapter = cfg.get("adapter") or {}
    if args.n_experts and adapter.get("name") == "lora" and adapter.get("experts", "grouped") in ("grouped", True):
        raise ValueError("adapter.experts=grouped (LoRA's default) adapts stepbench's own expert module, and this "
                         "model's experts are transformers': add adapter.experts=peft (peft's target_parameters) or "
                         "adapter.experts=none")
    return args


# ------------------------------------------------------------------ transformers inside stepbench
def stepbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                        softcap=None, s_aux=None, **kwargs):
    """transformers' attention-function interface -> the bound stepbench backend on packed tensors,
    with the features the layer asks for (:data:`core.contracts.ATTN_FEATURES`): its softmax scale,
    sliding window, logit soft-capping, sink logits."""
    meta = kwargs.get("stepbench_meta")
    if meta is None:
        raise RuntimeError("the stepbench attention ran without the micro-batch's documents (stepbench_meta)")
    if dropout:
        raise ValueError(f"attention dropout {dropout}: stepbench's backends run none; set attention_dropout: 0")
    features = {}
    if scaling is not None and abs(scaling - query.shape[-1] ** -0.5) > 1e-9 * query.shape[-1] ** -0.5:
        features["scale"] = float(scaling)
    if sliding_window:
        features["window"] = int(sliding_window)
    if softcap:
        features["softcap"] = float(softcap)
    if s_aux is not None:
        features["sinks"] = s_aux
    backend = module.backend
    missing = set(features) - set(getattr(backend, "features", ()))
    if missing:  # resolve refuses such rows first; this guards a model whose module tree hid it
        raise ValueError(f"attn '{getattr(backend, 'name', backend)}' cannot run this layer's attention: it needs "
                         f"{', '.join(sorted(missing))}; use +attn=sdpa")
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, heads, head_dim]
    return backend(q, k, v, meta, **features).unsqueeze(0), None


class LayerCall:
    """The arguments transformers' model loop gives a decoder layer besides its hidden states (the
    RoPE tables, position ids, the mask it built, the documents), carried through an activation
    strategy's block runner to the layer."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple, kwargs: dict):
        self.args, self.kwargs = args, kwargs


_ADAPTED: dict[type, type] = {}


def _adapted(base: type) -> type:
    """A subclass of a transformers decoder layer called as a stepbench block, ``(x, call, meta)``:
    the packed documents as one sequence ``x`` of ``[1, tokens, hidden]`` and the rest of what the
    model's loop passed (:class:`LayerCall`)."""
    if base not in _ADAPTED:
        def forward(self, x, call, meta):
            return base.forward(self, x, *call.args, **call.kwargs)

        _ADAPTED[base] = type(f"Stepbench{base.__name__}", (base,), {"forward": forward})
    return _ADAPTED[base]


class _LayerEntry:
    """What transformers' model loop calls for each decoder layer: hands the layer to the owning
    model's block runner (the activation strategy), so checkpointing, offload and torch.compile see
    the layer itself as the block. Attributes (``attention_type``, ...) read through to the layer."""

    def __init__(self, owner, layer):
        import weakref

        self._owner, self._layer = weakref.ref(owner), layer

    def __getattr__(self, name):
        if name.startswith("_"):  # _owner, _layer before __init__ (copy, pickle): not the layer's
            raise AttributeError(name)
        return getattr(self._layer, name)

    def __call__(self, hidden_states, *args, **kwargs):
        return self._owner().block_runner(self._layer, hidden_states, LayerCall(args, kwargs),
                                          kwargs.get("stepbench_meta"))


def _from_config(config, attn_implementation: str):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    except TypeError:  # older transformers: torch_dtype
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                torch_dtype=torch.float32)


class HFCausalLM(CausalLM):
    """A transformers causal LM with stepbench's interface: its own model loop (embedding and its
    scaling, RoPE of each layer type, decoder layers, final norm) on the packed documents as one
    sequence, each decoder layer run by the activation strategy's block runner, the bound attention
    backend inside transformers' attention, and stepbench's chunked log-prob head."""

    casts_adapters = False  # transformers' layers call peft's forward, which computes fp32 factors in fp32
    casts_weights = False  # transformers' layers use their weights as they are: FSDP2's mixed precision casts them

    def __init__(self, a: ModelArgs):
        nn.Module.__init__(self)
        from transformers import AttentionInterface

        AttentionInterface.register("stepbench", stepbench_attention)
        lm = _from_config(hf_config(a.hf_config), "stepbench")
        base = getattr(lm, lm.base_model_prefix)
        self.args = a
        for name, child in base.named_children():  # embed_tokens, layers, norm, rotary_emb, ...: names as native
            setattr(self, name, child)
        self.lm_head = None if a.tied_embeddings else lm.get_output_embeddings()
        object.__setattr__(self, "_base", base)  # runs the loop; its children are registered here
        self.block_runner = run_block
        self.head_budget_mib = 512
        self.head_compiled = False
        for layer in self.layers:
            layer.__class__ = _adapted(type(layer))
            attention = _attention_of(layer)
            attention.stepbench_attention = True
            attention.backend = None
        del base._modules["layers"]
        base.layers = [_LayerEntry(self, layer) for layer in self.layers]  # the loop calls the block runner

    def init_buffers(self) -> None:
        """transformers' buffers (RoPE tables) after materialisation from the meta device: each module
        holding buffers is built again on the CPU from its config, and its buffers copied."""
        for m in self.modules():
            own = dict(m.named_buffers(recurse=False))
            if not own or getattr(m, "config", None) is None:
                continue
            fresh = type(m)(m.config)
            with torch.no_grad():
                for name, buf in fresh.named_buffers(recurse=False):
                    if name in own:
                        own[name].copy_(buf)

    def hidden_states(self, input_ids, position_ids, meta):
        out = self._base(input_ids=input_ids.unsqueeze(0), position_ids=position_ids.unsqueeze(0), use_cache=False,
                         stepbench_meta=meta)
        return out.last_hidden_state[0]


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
                     fuses_projections=False, takes_kernels=False)


@hookimpl
def stepbench_register_models(register):
    register("hf", FAMILY, doc=FAMILY.doc)
