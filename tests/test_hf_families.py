"""Any decoder-only transformers model: each family's tiny config run by stepbench's ``hf`` family
against the same transformers model's own forward (eager attention, full fp32 logits), one document
and packed documents (the reference runs each document alone, so packing must isolate them)."""

import json
import re

import pytest
import torch

from core.data import AttnMeta
from core.losses import rl_loss
from core.plugins import registry
from plugins.models import hf

BASE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 96, "vocab_size": 256, "max_position_embeddings": 512,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "attention_dropout": 0.0,
        "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
SLIDING = {"sliding_window": 24, "layer_types": ["sliding_attention", "full_attention"]}
MOE = {"moe_intermediate_size": 32, "num_experts_per_tok": 2}
#: one tiny config per family the issue names (transformers' model_type); sliding windows shorter
#: than the documents, so the window is exercised
FAMILIES = {
    "llama": {"model_type": "llama", "tie_word_embeddings": True},
    "llama3-rope": {"model_type": "llama", "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    "mistral": {"model_type": "mistral", "sliding_window": 24},
    "qwen2": {"model_type": "qwen2"},  # q/k/v biases always (transformers has no attention_bias for it)
    "qwen3": {"model_type": "qwen3"},
    "qwen3_moe": {"model_type": "qwen3_moe", **MOE, "num_experts": 8},
    "gemma3": {"model_type": "gemma3_text", **SLIDING, "query_pre_attn_scalar": 32, "hidden_activation": "gelu_pytorch_tanh"},
    "phi3": {"model_type": "phi3", "sliding_window": 24},
    "olmo2": {"model_type": "olmo2"},
    "glm4": {"model_type": "glm4"},
    "glm4_moe": {"model_type": "glm4_moe", **MOE, "n_routed_experts": 8, "n_shared_experts": 1,
                 "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    "gpt_oss": {"model_type": "gpt_oss", **SLIDING, "num_local_experts": 8, "num_experts_per_tok": 2,
                "intermediate_size": 32},
}


def config(family: str) -> dict:
    return {**BASE, **FAMILIES[family]}


def hf_args(d: dict, attn: str = "sdpa"):
    return hf.from_config({"model": {"config": d, "flavour": "tiny"}, "attn": {"name": attn}, "ac": {"name": "none"}})


def pair(family: str):
    """stepbench's hf model (sdpa bound) and transformers' own model (eager attention) with the same
    random fp32 weights."""
    from transformers import AutoModelForCausalLM

    from core.trainer import bind_attention

    d = config(family)
    model = hf.build(hf_args(d))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.dim() == 1 else 0.0))
    model.init_buffers()
    ref = AutoModelForCausalLM.from_config(hf.hf_config(model.args.hf_config), attn_implementation="eager",
                                           dtype=torch.float32)
    theirs = {k if k.startswith("lm_head") else f"model.{k}": v for k, v in model.state_dict().items()}
    missing, unexpected = ref.load_state_dict(theirs, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    bind_attention(model, registry().get("attn", "sdpa").make({}))
    return model, ref


def batch(V: int, doc_lens: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = sum(doc_lens)
    ids, targets = torch.randint(0, V, (T,), generator=g), torch.randint(0, V, (T,), generator=g)
    return ids, targets, torch.randn(T, generator=g) * 0.1, torch.randn(T, generator=g)


def loss_and_grads(lp, ent, noise, adv, model):
    loss, _ = rl_loss(lp, lp.detach() + noise, adv, torch.ones(lp.shape[0], dtype=torch.bool))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n.removeprefix("model."): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), ent.detach(), loss.detach(), grads


def run_stepbench(model, doc_lens):
    ids, targets, noise, adv = batch(model.args.vocab_size, doc_lens)
    pos = torch.cat([torch.arange(n) for n in doc_lens])
    lp, ent = model(ids, pos, AttnMeta.from_doc_lens(doc_lens, "cpu"), targets)
    return loss_and_grads(lp, ent, noise, adv, model)


def run_transformers(ref, V, doc_lens):
    """transformers' own forward on each document alone, log-softmax over its full fp32 logits."""
    ids, targets, noise, adv = batch(V, doc_lens)
    lps, ents, s = [], [], 0
    for n in doc_lens:
        logits = ref(input_ids=ids[None, s:s + n], position_ids=torch.arange(n)[None], use_cache=False).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        lps.append(logp.gather(-1, targets[s:s + n, None])[:, 0])
        ents.append(-(logp.exp() * logp).sum(-1))
        s += n
    return loss_and_grads(torch.cat(lps), torch.cat(ents), noise, adv, ref)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("doc_lens", [[72], [40, 9, 64]], ids=["one-doc", "packed"])
def test_family_equals_transformers_own_forward(family, doc_lens):
    """log-probs, entropy, loss and every gradient within fp32 tolerance."""
    model, ref = pair(family)
    ours, theirs = run_stepbench(model, doc_lens), run_transformers(ref, model.args.vocab_size, doc_lens)
    for name, x, y in zip(("logprobs", "entropy", "loss"), ours[:3], theirs[:3]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-5, msg=f"{family} {name}")
    assert set(ours[3]) == set(theirs[3]) - ({"lm_head.weight"} if model.args.tied_embeddings else set())
    for n, grad in ours[3].items():
        torch.testing.assert_close(grad, theirs[3][n], rtol=1e-4, atol=1e-6, msg=f"{family} {n}")


def test_module_tree_facts():
    """What the family reads off the module tree: exact parameter counts, per-layer windows and
    features, routed experts counted by top_k / experts, LoRA targets without the routers."""
    from transformers import AutoModelForCausalLM

    for family in FAMILIES:
        args = hf_args(config(family))
        real = AutoModelForCausalLM.from_config(hf.hf_config(args.hf_config))
        assert args.n_params == sum(p.numel() for p in real.parameters()), family
        assert len(args.layer_mm_params) == args.n_layers and all(n > 0 for n in args.layer_mm_params)
    gemma = hf_args(config("gemma3"))
    assert gemma.windows == (24, 0) and set(gemma.attn_features) == {"scale", "window"}
    assert hf_args(config("mistral")).windows == (24, 24)
    assert hf_args(config("gpt_oss")).attn_features == ("sinks", "window")
    assert hf_args(config("llama")).attn_features == () and hf_args(config("llama")).windows == (0, 0)
    phi = dict(hf_args(config("phi3")).lora_dims)
    assert set(phi) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    moe = hf_args(config("qwen3_moe"))
    assert "gate" not in dict(moe.lora_dims) and dict(moe.expert_dims).keys() == {"experts.gate_up_proj",
                                                                                   "experts.down_proj"}
    dense = hf_args(config("qwen3"))
    d = config("qwen3")
    attn = d["hidden_size"] * d["head_dim"] * 2 * (d["num_attention_heads"] + d["num_key_value_heads"])
    assert dense.layer_mm_params == (attn + 3 * d["hidden_size"] * d["intermediate_size"],) * 2
    E, k, I, H = 8, 2, MOE["moe_intermediate_size"], d["hidden_size"]
    assert moe.layer_mm_params[0] == attn + H * E + k * 3 * I * H  # router, then top-k of the experts


@pytest.mark.parametrize("family,experts", [("qwen3", "none"), ("phi3", "none"), ("qwen3_moe", "peft"),
                                            ("gpt_oss", "peft"), ("glm4_moe", "none")])
def test_lora_size_from_the_module_tree_equals_peft(family, experts):
    """The LoRA parameters predicted from the module tree equal what peft adds to the model."""
    from core.memory import lora_params
    from core.trainer import bind_attention  # noqa: F401  (the model is built as a row builds it)

    args = hf_args(config(family))
    with torch.device("meta"):
        model = hf.build(args)
    lora = registry().get("adapter", "lora").make({"rank": 4, "experts": experts})
    model = lora.apply(model)
    assert lora.counts(model)["adapter"] == lora_params(args, 4, experts=experts != "none") \
        == lora.trainable_params(args)


def test_sliding_window_needs_a_backend_that_has_it(tmp_path):
    """A model whose attention needs a feature the chosen backend lacks is refused before anything
    is built, naming the backends that run it; the rows of the others run."""
    from tests.test_cli import run as cli

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config("gpt_oss")))
    res = tmp_path / "rows.jsonl"
    p = cli("model=hf", f"model.config={cfg}", "device=cpu", "steps=2", "seq_len=128", "+attn=sdpa", "+ac=recompute",
            f"results={res}")
    assert p.returncode == 0, p.stderr[-2000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["status"] == "ok" and row["family"] == "hf" and row["model"].endswith("(hf)")

    from core.contracts import RunContext
    from core.resolve import missing_features

    args = hf_args(config("gpt_oss"))
    plain = type("Plain", (), {"name": "plaincausal", "features": frozenset({"scale"})})()
    why = missing_features(plain, args, RunContext("cpu", "", None, 1))
    assert why.startswith("its attention needs learned per-head sink logits; sliding window, which plaincausal")
    assert "+attn=sdpa" in why and "\n" not in why


#: each family's CPU row, with an adapter and activation strategy per row so that the combinations
#: are covered across the families (LoRA on MoE families adapts the experts through peft or not at all)
ROWS = {"llama": ("full", "recompute"), "llama3-rope": ("lora", "offload"), "mistral": ("lora", "recompute"),
        "qwen2": ("full", "offload"), "qwen3": ("lora", "none"), "qwen3_moe": ("lora experts=peft", "recompute"),
        "gemma3": ("full", "offload"), "phi3": ("lora", "recompute"), "olmo2": ("full", "none"),
        "glm4": ("lora", "offload"), "glm4_moe": ("lora experts=none", "recompute"), "gpt_oss": ("full", "offload")}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_writes_a_row(family, tmp_path):
    from tests.test_cli import run as cli

    adapter, ac = ROWS[family]
    name, *opts = adapter.split()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config(family)))
    res = tmp_path / "rows.jsonl"
    task = "task=sft" if family in ("olmo2", "glm4") else "task=rl"
    p = cli("model=hf", f"model.config={cfg}", "device=cpu", "steps=2", "seq_len=128", "+attn=sdpa", f"+ac={ac}",
            f"adapter={name}", *[f"adapter.{o}" for o in opts], task, f"results={res}")
    assert p.returncode == 0, p.stderr[-2000:]
    (row,) = [json.loads(x) for x in res.read_text().splitlines()]
    assert row["status"] == "ok" and row["family"] == "hf" and row["tps"] > 0
    # a config of one's own is named by its model type and its fingerprint (never taken for another's rows)
    assert re.fullmatch(rf"{config(family)['model_type']} \[config [0-9a-f]{{8}}\] \(hf\)", row["model"]), row["model"]
    assert row["predicted_mem_gib"] > 0 and row["flops_per_token_prime_rl"] > 0 and row["hw_tflops"] > 0
