"""Hostile input (issue #31): a table of bad command lines across ``core.bench``, ``core.report``,
``core.predict``, ``core.fa3_build`` and the ``stepbench`` script. Each one must exit with status 2
and exactly one line on stderr that says what to type instead, before anything is allocated: no
row appended, no input written over, no file removed.

Most cases run in this process (fast): ``core.bench``'s checks are ``check_overrides`` then
``resolve`` then ``check_writable``, exactly what ``python -m core.bench`` runs before it measures;
the other tools' ``main(argv)`` return their status. A handful of bench cases run the real
``python -m core.bench`` to prove the end-to-end status, the one stderr line and the untouched
results file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model": "qwen3_tiny", "device": "cpu", "steps": "2", "seq_len": "128"}
RESULTS_BEFORE = b'{"status": "ok", "pre": "existing row"}\n'
FAILED_ROW = {"status": "failed", "error": "refused: bad overrides (nope)", "overrides": ["+attn=nope"]}
PREDICTED = ROOT / "benchmarks" / "results" / "predicted"
RESULT_INPUT = ROOT / "benchmarks" / "results" / "h100-table.jsonl"
PUBLISHED_INPUT = ROOT / "benchmarks" / "reference" / "prime-rl-benchmarks-2026-01.md"

HF_OK = {"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 512,
         "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False}
HF_MOE = {**HF_OK, "model_type": "qwen3_moe", "moe_intermediate_size": 32, "num_experts": 8,
          "num_experts_per_tok": 2, "norm_topk_prob": True, "tie_word_embeddings": False}
NO_HEAD_DIM = {k: v for k, v in HF_OK.items() if k != "head_dim"}
#: config.json files written into each test's folder: name -> contents (a dict is written as JSON)
HF_CONFIGS = {
    "ok.json": HF_OK,
    "type_list.json": {**HF_OK, "model_type": ["qwen3"]},
    "zero_heads.json": {**HF_OK, "num_attention_heads": 0},
    "zero_kv_heads.json": {**HF_OK, "num_key_value_heads": 0},
    "neg_hidden.json": {**HF_OK, "hidden_size": -64},
    "neg_layers.json": {**HF_OK, "num_hidden_layers": -2},
    "zero_layers.json": {**HF_OK, "num_hidden_layers": 0},
    "zero_vocab.json": {**HF_OK, "vocab_size": 0},
    "neg_ffn.json": {**HF_OK, "intermediate_size": -1},
    "str_hidden.json": {**HF_OK, "hidden_size": "sixty-four"},
    "float_hidden.json": {**HF_OK, "hidden_size": 64.5},
    "huge_heads.json": {**HF_OK, "num_attention_heads": 10**30, "num_key_value_heads": 3},
    "no_hidden.json": {k: v for k, v in HF_OK.items() if k != "hidden_size"},
    "no_heads.json": {k: v for k, v in HF_OK.items() if k != "num_attention_heads"},
    "no_layers.json": {k: v for k, v in HF_OK.items() if k != "num_hidden_layers"},
    "no_vocab.json": {k: v for k, v in HF_OK.items() if k != "vocab_size"},
    "no_model_type.json": {k: v for k, v in HF_OK.items() if k != "model_type"},
    "heads_not_divide.json": {**NO_HEAD_DIM, "hidden_size": 66},
    "kv_not_divide.json": {**HF_OK, "num_key_value_heads": 3},
    "odd_head_dim.json": {**HF_OK, "head_dim": 15},
    "neg_eps.json": {**HF_OK, "rms_norm_eps": -1e-6},
    "zero_theta.json": {**HF_OK, "rope_theta": 0},
    "tiny_theta.json": {**HF_OK, "rope_theta": 1e-300},
    "huge_eps.json": {**HF_OK, "rms_norm_eps": 1e300},
    "bogus_type.json": {**HF_OK, "model_type": "no_such_arch"},
    "bloom.json": {"model_type": "bloom", "hidden_size": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512},
    "moe_topk.json": {**HF_MOE, "num_experts_per_tok": 9},
    "moe_zero_experts.json": {**HF_MOE, "num_experts": 0},
    "glm_no_shared.json": {**HF_OK, "model_type": "glm4_moe", "moe_intermediate_size": 32, "n_routed_experts": 4,
                           "num_experts_per_tok": 2, "n_shared_experts": 0},
    "rotary_2.json": {**HF_OK, "model_type": "glm4", "partial_rotary_factor": 2.0},
    "vocab_1.json": {**HF_OK, "vocab_size": 1},
    "no_intermediate.json": {k: v for k, v in HF_OK.items() if k != "intermediate_size"},
    "gpt_oss_no_experts.json": {**HF_OK, "model_type": "gpt_oss", "num_experts_per_tok": 2},
    "mlp_only_out.json": {**HF_MOE, "mlp_only_layers": [7, 9]},
    "rope_negative.json": {**HF_OK, "model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": -2.0}},
    "bos_out.json": {**HF_OK, "bos_token_id": 1000000},
    "softcap_negative.json": {**HF_OK, "model_type": "gemma3_text", "attn_logit_softcapping": -50},
    "qpas_zero.json": {**HF_OK, "model_type": "gemma3_text", "query_pre_attn_scalar": 0},
    "sparse_step_zero.json": {**HF_MOE, "decoder_sparse_step": 0},
    "layer_types_short.json": {**HF_OK, "model_type": "qwen2", "layer_types": ["full_attention"]},
    "dropout.json": {**HF_OK, "attention_dropout": 0.1},
    "n_group.json": {**HF_OK, "model_type": "glm4_moe", "moe_intermediate_size": 32, "n_routed_experts": 4,
                     "num_experts_per_tok": 2, "n_group": 3},
    "topk_group.json": {**HF_OK, "model_type": "glm4_moe", "moe_intermediate_size": 32, "n_routed_experts": 4,
                        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 3},
    "local_theta.json": {**HF_OK, "model_type": "gemma3_text", "rope_local_base_freq": 0},
    "list.json": [1, 2, 3],
    "notjson.json": "{ this is not json",
    "llava.json": {"model_type": "llava", "text_config": {**HF_OK, "model_type": "llama"}},
    "bigint.json": '{"model_type": "qwen3", "hidden_size": ' + "9" * 5000 + "}",
    # round thirteen: transformers 5 keeps rope_theta in rope_parameters; NaN factors; storage fields
    "init_nan.json": '{"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, '
                     '"num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 512, '
                     '"initializer_range": NaN}',
    "rp_theta0.json": {**HF_OK, "model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 0}},
    "rp_theta_neg.json": {**HF_OK, "model_type": "llama", "rope_parameters": {"rope_type": "default",
                                                                              "rope_theta": -10000}},
    "rs_nan.json": '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, '
                   '"num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 512, '
                   '"rope_scaling": {"rope_type": "linear", "factor": NaN}}',
    "prf_tiny.json": {**HF_OK, "model_type": "glm4", "partial_rotary_factor": 1e-9},
    "dupkeys.json": '{"model_type": "qwen3", "hidden_size": 64, "hidden_size": 128}',
    "quantized.json": {**HF_OK, "quantization_config": {"load_in_4bit": True}},
    "dtype_int8.json": {**HF_OK, "dtype": "int8"},
}


def hf(name):
    return ["model=hf", f"model.config={{tmp}}/{name}"]


# ----------------------------------------------------------------------------------- the table
# (tool, argv, first-line needle); {tmp} is the test's folder, {res} a results file holding one row,
# {file} a plain file, {dir} an empty folder, {notjson} a file of text, {rows} a results file the
# report can read, {base} a baseline file, {pred} a predictions file, {tmp}/link.md a link to {rows},
# {fa} a fake flash-attention checkout with an empty csrc/cutlass. Every case expects status 2 unless it says otherwise.
B = "bench"
CASES = [
    # --- bench: unknown keys
    (B, ["foo=1"], "unknown option 'foo'"),
    (B, ["+seq_lenn=128"], "did you mean seq_len?"),
    (B, ["adapter=lora", "+adapter.rnk=4"], "did you mean rank?"),
    (B, ["+model.bogus=1"], "unknown option 'model.bogus'"),
    (B, ["+hardware.bogus=1"], "unknown option 'hardware.bogus'"),
    (B, ["+task.bogus=1"], "unknown option 'task.bogus'"),
    (B, ["ac.bogus=1"], "no ac plugin has it"),
    (B, ["sync.bogus=1"], "no sync plugin has it"),
    (B, ["attn.bogus=1"], "no attn plugin has it"),
    (B, ["+ac.bogus=1"], "unknown option 'ac.bogus'"),
    (B, ["sync.writer=write"], "type +sync=filesystem sync.writer=..."),
    (B, ["attn.via=aten"], "type +attn=fa2 attn.via=..."),
    (B, ["seq_len.x=1"], "seq_len is a value"),
    # --- bench: wrong types
    (B, ["seq_len=abc"], "try seq_len=8192"),
    (B, ["seq_len=1.5"], "seq_len must be an integer"),
    (B, ["seq_len=true"], "seq_len must be an integer"),
    (B, ["seq_len=[128]"], "seq_len must be an integer"),
    (B, ["steps=abc"], "try steps=6"),
    (B, ["steps=2.5"], "steps must be an integer"),
    (B, ["micro_batches=abc"], "try micro_batches=2"),
    (B, ["micro_batches=true"], "micro_batches must be an integer"),
    (B, ["measure_s=abc"], "try measure_s=30"),
    (B, ["measure_s=nan"], "measure_s must be a number"),
    (B, ["measure_s=inf"], "measure_s must be a number"),
    (B, ["seed=abc"], "try seed=0"),
    (B, ["seed=1.5"], "seed must be an integer"),
    (B, ["compile=maybe"], "type compile=true or compile=false"),
    (B, ["compile=1"], "compile must be true or false"),
    (B, ["compile_head=maybe"], "compile_head=true or compile_head=false"),
    (B, ["fuse=maybe"], "use fuse=lora, fuse=true or fuse=false"),
    (B, ["fsdp=no"], "use fsdp=auto"),
    (B, ["fsdp=false"], "use fsdp=auto"),
    (B, ["head_budget_mib=abc"], "try head_budget_mib=512"),
    (B, ["device=gpu"], "use device=auto"),
    (B, ["redo=maybe"], "type redo=true or redo=false"),
    (B, ["repeats=abc"], "try repeats=3"),
    (B, ["max_memory_gib=abc"], "try max_memory_gib=80"),
    (B, ["max_host_gib=abc"], "try max_host_gib=64"),
    (B, ["memory_profile=maybe"], "memory_profile=true or memory_profile=false"),
    (B, ["ops_profile=2"], "ops_profile=true or ops_profile=false"),
    (B, ["ops_trace=trace.txt"], "try ops_trace=runs/trace.json.gz"),
    (B, ["busy_step=maybe"], "busy_step=true or busy_step=false"),
    (B, ["hardware_as_label=yes"], "hardware_as_label=true or hardware_as_label=false"),
    (B, ["row_timeout_s=abc"], "try row_timeout_s=1800"),
    # --- bench: out of range
    (B, ["seq_len=0"], "seq_len must be a positive multiple of 128"),
    (B, ["seq_len=-128"], "try seq_len=128"),
    (B, ["seq_len=1000"], "try seq_len=1024"),
    (B, ["seq_len=100"], "try seq_len=128"),
    (B, ["seq_len=1000000000"], "seq_len must be at most 1048576"),
    (B, ["micro_batches=1000000000"], "micro_batches must be at most 1024"),
    (B, ["seq_len=128", "seq_len=256"], "seq_len is given twice"),
    (B, ["hydra.run.dir=/dev/full/x"], "leave hydra.run.dir out"),
    (B, ["steps=1"], "steps must be at least 2"),
    (B, ["steps=0"], "try steps=6"),
    (B, ["steps=-1"], "try steps=6"),
    (B, ["steps=99999999999999999999"], "try steps=6"),
    (B, ["micro_batches=0"], "micro_batches must be at least 1"),
    (B, ["micro_batches=-1"], "try micro_batches=2"),
    (B, ["micro_batches=99999999999999999999"], "try micro_batches=2"),
    (B, ["measure_s=-1"], "measure_s must be at least 0"),
    (B, ["row_timeout_s=0"], "row_timeout_s must be above 0"),
    (B, ["row_timeout_s=-5"], "try row_timeout_s=1800"),
    (B, ["repeats=0"], "repeats must be at least 1"),
    (B, ["head_budget_mib=0"], "head_budget_mib must be at least 1"),
    (B, ["max_memory_gib=0"], "max_memory_gib must be above 0"),
    (B, ["max_memory_gib=-1"], "try max_memory_gib=80"),
    (B, ["max_host_gib=0"], "max_host_gib must be above 0"),
    (B, ["max_host_gib=-2"], "try max_host_gib=64"),
    (B, ["seed=-1"], "seed must be at least 0"),
    (B, ["seed=99999999999999999999"], "try seed=0"),
    (B, ["seed=18446744073709551616"], "try seed=0"),
    (B, ["+ac=offload_attention", "max_host_gib=0.0001", "seq_len=512"], "GiB is available: try a shorter seq_len"),
    # --- bench: packing
    (B, ["packing=fixed:0"], "packing=fixed:N (documents of N tokens, N >= 2"),
    (B, ["packing=fixed:-1"], "e.g. packing=fixed:1024"),
    (B, ["packing=fixed:abc"], "e.g. packing=fixed:1024"),
    (B, ["packing=fixed:"], "e.g. packing=fixed:1024"),
    (B, ["packing=bogus"], "use packing=single"),
    (B, ["packing=1"], "use packing=single"),
    # --- bench: plugin names in every group
    (B, ["model=bogus"], "unknown model 'bogus': choose one of"),
    (B, ["task=bogus"], "unknown task 'bogus': choose one of"),
    (B, ["adapter=bogus"], "unknown adapter 'bogus': choose one of"),
    (B, ["hardware=bogus"], "unknown hardware 'bogus': choose one of"),
    (B, ["+attn=bogus"], "(e.g. +attn="),
    (B, ["+ac=bogus"], "(e.g. +ac="),
    (B, ["+sync=bogus"], "(e.g. +sync="),
    (B, ["+sweep=bogus"], "(e.g. +sweep="),
    (B, ["+attn=sdpa,bogus"], "unknown attn 'bogus'"),
    (B, ["model=qwen3_tiny,bogus"], "unknown model 'bogus'"),
    (B, ["attn=fa3"], "type +attn=fa3"),
    (B, ["ac=offload"], "type +ac=offload"),
    (B, ["sync=host"], "type +sync=host"),
    (B, ["model.family=bogus"], "bogus"),
    (B, ["model.flavour=bogus"], "no flavour 'bogus': choose one of"),
    (B, ["task.name=bogus"], "use task=rl or task=sft"),
    (B, ["+attn=fa3"], "attn 'fa3' cannot run here"),
    (B, ["+attn=cudnn"], "attn 'cudnn' cannot run here"),
    (B, ["+attn=fa2", "attn.via=bogus"], "try attn.via=auto"),
    # --- bench: plugin options
    (B, ["ac.mode=bogus"], "use ac.mode=full or ac.mode=selective"),
    (B, ["+ac=recompute", "ac.mode=bogus"], "use ac.mode=full or ac.mode=selective"),
    (B, ["+ac=offload", "ac.mode=bogus"], "use ac.mode=full, selective or attention"),
    (B, ["+ac=offload", "ac.keep_last=-1"], "(got -1): try ac.keep_last=1"),
    (B, ["+ac=offload", "ac.keep_last=abc"], "ac.keep_last must be an integer"),
    (B, ["+ac=recompute", "ac.inside=maybe"], "type ac.inside=true or ac.inside=false"),
    (B, ["+ac=selective", "ac.save=attention"], "ac.save must be a list"),
    (B, ["+ac=selective", "ac.save=['(']"], "is not a regular expression"),
    (B, ["adapter=lora", "adapter.rank=0"], "try adapter.rank=16"),
    (B, ["adapter=lora", "adapter.rank=-1"], "try adapter.rank=16"),
    (B, ["adapter=lora", "adapter.rank=abc"], "adapter.rank must be an integer (got 'abc')"),
    (B, ["adapter=lora", "adapter.rank=1.5"], "adapter.rank must be an integer"),
    (B, ["adapter=lora", "adapter.rank=99999999999999999999"], "adapter.rank"),
    (B, ["adapter=lora", "adapter.alpha=x"], "try adapter.alpha=32"),
    (B, ["adapter=lora", "adapter.alpha=-1"], "try adapter.alpha=32"),
    (B, ["adapter=lora", "adapter.experts=bogus"], "try adapter.experts=grouped"),
    (B, ["adapter=lora", "adapter.replicate=maybe"], "try adapter.replicate=auto"),
    (B, ["+sync=filesystem", "sync.keep=0"], "sync.keep must be a positive integer (got 0): try sync.keep=2"),
    (B, ["+sync=filesystem", "sync.keep=-1"], "try sync.keep=2"),
    (B, ["+sync=filesystem", "sync.keep=abc"], "sync.keep must be an integer"),
    (B, ["+sync=filesystem", "sync.gather_mib=-1"], "try sync.gather_mib=128"),
    (B, ["+sync=host", "sync.gather_mib=-1"], "try sync.gather_mib=128"),
    (B, ["+sync=filesystem", "sync.writer=bogus"], "try sync.writer=mapped"),
    (B, ["+sync=filesystem", "sync.unmap=bogus"], "try sync.unmap=background"),
    (B, ["+sync=filesystem", "sync.touch=maybe"], "sync.touch=true or sync.touch=false"),
    (B, ["+sync=filesystem", "sync.fsync=maybe"], "sync.fsync=true or sync.fsync=false"),
    (B, ["+sync=filesystem", "sync.overlap=maybe"], "sync.overlap=true or sync.overlap=false"),
    (B, ["+sync=filesystem", "sync.cleanup=maybe"], "sync.cleanup=true or sync.cleanup=false"),
    (B, ["+sync=nccl", "sync.bucket_mib=0"], "try sync.bucket_mib=256"),
    (B, ["+sync=nccl", "sync.backend=bogus"], "use sync.backend=auto, nccl or gloo"),
    (B, ["+sync=nccl", "sync.backend=nccl"], "sync.backend=nccl needs a GPU for the receiver"),
    (B, ["+sync=nccl", "sync.verify=maybe"], "sync.verify=true or sync.verify=false"),
    # --- bench: hardware
    (B, ["hardware=h100"], "this row runs on the CPU (its row says CPU): leave hardware= out"),
    (B, ["hardware=a6000"], "this row runs on the CPU (its row says CPU): leave hardware= out"),
    (B, ["hardware=b200"], "this row runs on the CPU (its row says CPU): leave hardware= out"),
    (B, ["device=cuda"], "use device=cpu"),
    (B, ["hardware=h100", "hardware_as_label=true", "hardware.memory_gib=-1"], "try hardware.memory_gib="),
    (B, ["hardware=h100", "hardware_as_label=true", "hardware.peak_flops=0"], "try hardware.peak_flops="),
    (B, ["hardware=h100", "hardware_as_label=true", "hardware.hbm_tbps=abc"], "try hardware.hbm_tbps="),
    # --- bench: results
    (B, ["results={dir}"], "is a directory: name a file"),
    (B, ["results={file}/rows.jsonl"], "is a file, not a folder"),
    (B, ["results={file}/sub/rows.jsonl"], "is a file, not a folder"),
    (B, ["results={tmp}/newdir/"], "is a directory: name a file"),
    (B, ["results=''"], "try results=runs/rows.jsonl"),
    (B, ["results="], "try results=runs/rows.jsonl"),
    (B, ["results=/"], "results=/ is a directory"),
    (B, ["results={tmp}/fifo"], "is not a regular file"),
    (B, ["results=/dev/full"], "is not a regular file"),
    (B, ["results=/dev/null"], "is not a regular file"),
    (B, ["results={tmp}/dangle.jsonl"], "is a link into a folder that does not exist"),
    (B, ["results={tmp}/loop.jsonl"], "cannot be resolved"),
    (B, ["results={tmp}/" + "x" * 300 + ".jsonl"], "longer than the"),
    # --- bench: model=hf and its config.json
    (B, ["model=hf"], "add model.config=PATH/config.json"),
    (B, hf("nope.json"), "no such file or folder: pass a config.json path"),
    (B, ["model=hf", "model.config={dir}"], "is a folder without config.json: pass the config.json path"),
    (B, hf("notjson.json"), "not a readable config.json (Expecting"),
    (B, hf("llava.json"), "is a composite (multimodal) config (model_type 'llava')"),
    (B, hf("bigint.json"), "not a readable config.json (Exceeds the limit (4300 digits)"),
    (B, hf("list.json"), "not a JSON object"),
    (B, hf("zero_heads.json"), "num_attention_heads"),
    (B, hf("zero_kv_heads.json"), "num_key_value_heads"),
    (B, hf("neg_hidden.json"), "hidden_size"),
    (B, hf("neg_layers.json"), "num_hidden_layers"),
    (B, hf("zero_layers.json"), "num_hidden_layers"),
    (B, hf("zero_vocab.json"), "vocab_size"),
    (B, hf("neg_ffn.json"), "intermediate_size"),
    (B, hf("str_hidden.json"), "hidden_size"),
    (B, hf("float_hidden.json"), "hidden_size"),
    (B, hf("huge_heads.json"), "num_attention_heads must be a whole number from 1 to 4096"),
    (B, hf("no_hidden.json"), 'add "hidden_size"'),
    (B, hf("no_heads.json"), 'add "num_attention_heads"'),
    (B, ["+model.config={tmp}/ok.json"], "model.config is an option of the hf family's models"),
    (B, hf("no_layers.json"), 'add "num_hidden_layers"'),
    (B, hf("no_vocab.json"), 'add "vocab_size"'),
    (B, hf("no_model_type.json"), "has no model_type: add the model's own"),
    (B, hf("heads_not_divide.json"), "num_attention_heads"),
    (B, hf("kv_not_divide.json"), 'set "num_key_value_heads" to a divisor of it, e.g. 1'),
    (B, hf("odd_head_dim.json"), "head_dim"),
    (B, hf("neg_eps.json"), "rms_norm_eps"),
    (B, hf("zero_theta.json"), "rope_theta"),
    (B, hf("bogus_type.json"), "check model_type"),
    (B, hf("bloom.json"), "bypasses transformers' attention registry"),
    (B, [*hf("moe_topk.json"), "adapter=full"], "num_experts_per_tok"),
    (B, [*hf("moe_zero_experts.json"), "adapter=full"], "num_experts"),
    (B, ["model=hf_qwen3_tiny", "model.plain=maybe"], "model.plain=true or model.plain=false"),
    (B, hf("glm_no_shared.json"), "n_shared_experts must be a whole number from 1"),
    (B, hf("rotary_2.json"), "partial_rotary_factor must be above 0 and at most 1"),
    (B, hf("vocab_1.json"), "vocab_size 1 leaves nothing to predict"),
    (B, hf("no_intermediate.json"), "model.config has no intermediate_size"),
    (B, hf("gpt_oss_no_experts.json"), "model.config has no num_local_experts"),
    (B, [*hf("mlp_only_out.json"), "adapter=full"], "mlp_only_layers must list layer indices from 0 to 1"),
    (B, hf("rope_negative.json"), "rope_scaling.factor -2.0 must be above 0"),
    (B, hf("bos_out.json"), "bos_token_id 1000000 is not a token"),
    (B, hf("softcap_negative.json"), "attn_logit_softcapping must be a number above 0"),
    (B, hf("qpas_zero.json"), "query_pre_attn_scalar must be a number above 0"),
    (B, [*hf("sparse_step_zero.json"), "adapter=full"], "decoder_sparse_step must be a number above 0"),
    (B, hf("layer_types_short.json"), "layer_types must list one type per layer (2)"),
    (B, ["seq_len=128,256"], "lists several values, which is a sweep: add -m"),
    (B, ["-m", "seed=range(0,0)"], "sweeps over no value"),
    (B, ["-m", "-m", "seed=0"], "-m and -m are one flag given 2 times"),
    (B, ["seq_len==128"], "cannot parse 'seq_len==128'"),
    (B, ["tag=[a,b"], "cannot parse 'tag=[a,b'"),
    (B, ["seqlen=128"], "unknown option 'seqlen' (did you mean seq_len?)"),
    (B, ["adapter.rank=8"], "the default adapter has no option 'rank': lora has it"),
    (B, ["+model.plain=true"], "model.plain is an option of the hf family's models"),
    (B, ["repeats=3"], "repeats applies to sweeps"),
    (B, ["redo=true"], "redo applies to sweeps"),
    (B, ["row_timeout_s=5"], "row_timeout_s applies to sweeps"),
    (B, ["packing=fixed:1"], "N >= 2"),
    (B, ["packing=fixed:100000"], "fill no more than one of seq_len"),
    (B, ["measure_s=1e9"], "measure_s must be at most 86400"),
    (B, ["tag=[a,b]"], "tag must be text"),
    (B, ["adapter=lora", "adapter.rank=100000"], "exceeds the model's hidden size"),
    (B, ["adapter=lora", "adapter.alpha=1000000000"], "adapter.alpha must be a number above 0 and at most 65536"),
    (B, ["adapter=lora", "adapter.experts=peft"], "applies to models with routed experts"),
    (B, ["+sync=filesystem", "sync.dir="], "sync.dir is empty"),
    (B, ["+sweep=cpu_smoke", "repeats=100000"], "repeats must be at most 100"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus=2", "gpus=4"], "gpus= is given twice"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "steps=100"], "steps= changes nothing in a prediction"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "device=cpu"], "device= changes nothing in a prediction"),
    ("report", ["--results", "{rows}", "--out", "{tmp}/a.md", "--out", "{tmp}/b.md"], "--out is given more than once"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus=8", "+kernels=triton"], "the predictor has no fit"),
    (B, ["ops_profile=true"], "ops_profile needs a CUDA GPU"),
    (B, ["memory_profile=true"], "memory_profile needs a CUDA GPU"),
    (B, ["-m", "+sweep=cpu_smoke"], "+sweep=... is a sweep already"),
    (B, [*hf("dropout.json")], "attention_dropout 0.1"),
    (B, [*hf("n_group.json"), "adapter=full"], "n_group (3) must divide the 4 routed experts"),
    (B, [*hf("topk_group.json"), "adapter=full"], "topk_group (3) exceeds n_group (2)"),
    (B, hf("local_theta.json"), "rope_local_base_freq must be a number above 0"),
    ("report", ["--results", "{rows}", "--baseline", "{dir}"], "is a folder: name the baseline file"),
    ("report", ["--results", "{rows}", "--baseline", "{notjson}"], "holds no rows"),
    ("report", ["--results", "{rows}", "--baseline", "{tmp}/missing.jsonl"], "does not exist"),
    ("report", ["--results", "{rows}", "--predictions", "{notjson}"], "holds no rows"),
    (B, ["model=hf_qwen3_tiny", "model.plain=true", "+attn=sdpa", "+ac=offload"], "use +ac=recompute or +ac=none"),
    (B, ["model=hf_qwen3_tiny", "model.plain=true", "+attn=sdpa", "packing=random"], "use packing=single"),
    (B, ["model=hf_qwen3_tiny", "model.plain=true", "+attn=sdpa", "+ac=recompute", "ac.mode=selective"],
     "use +ac=recompute or +ac=none"),
    (B, ["model=auto", "model.by_device=abc"], "model.by_device must map cuda and cpu"),
    (B, ["model=auto", "model.by_device.cpu.max_seq_len=abc"], "try model.by_device.cpu.max_seq_len=512"),
    (B, ["model=auto", "model.by_device.cpu.family=bogus"], "bogus"),
    # --- report
    ("report", ["--results", "{tmp}/missing.jsonl"], "no such results file"),
    ("report", ["--results", "{notjson}"], "nothing written"),
    ("report", ["--results", "{file}"], "nothing written"),
    ("report", ["--results", "{dir}"], "nothing written"),
    ("report", ["--results", "{rows}", "--out", "{rows}"], "is an input"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", "{res}"], "holds something other than a baseline"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", "{pred}"], "holds something other than a baseline"),
    ("predict", ["--published", "--out", "{tmp}/P.md", "--rows", "{res}"], "holds something other than predicted rows"),
    ("report", ["--results", "{rows}", "--out", "-"], "--out - would make a file named '-'"),
    ("predict", ["--published", "--out", "-"], "--out - would make a file named '-'"),
    ("predict", ["model=hf_gpt_oss_20b", "hardware=h100", "+attn=fa3"], "learned per-head sink logits"),
    ("predict", ["model=qwen3_tiny", "hardware=h100", "+ac=offload", "ac.keep_last=9"], "keeps all 2 blocks"),
    (B, ["tag=nan"], "tag=nan is read as a number"),
    (B, ["-m", "--cfg", "job"], "-m and --cfg do not go together"),
    (B, ["-m", "seq_len=128,abc"], "seq_len=128,abc: seq_len must be an integer"),
    (B, ["-m", "seq_len=128,96"], "seq_len=128,96: seq_len must be a positive multiple of 128"),
    (B, ["-m", "steps=2,1"], "steps=2,1: steps must be at least 2"),
    (B, ["packing=fixed:0002"], "packing=fixed:2"),
    (B, ["results={pred}"], "holds predicted rows (python -m core.predict), not measured rows"),
    (B, ["results={base}"], "holds a baseline (--save-baseline), not measured rows"),
    (B, ["+steps=3"], "drop the +"),
    (B, ["model=hf", "model.config=/dev/zero"], "is not a regular file"),
    (B, hf("tiny_theta.json"), "rope_theta 1e-300 is outside"),
    (B, ["+ac=offload", "ac.keep_last=99"], "keeps all 2 blocks on the GPU"),
    (B, hf("huge_eps.json"), "rms_norm_eps 1e+300 is outside"),
    (B, ["tag=1e400"], "tag=inf is read as a number"),
    (B, ["head_budget_mib=9223372036854775807"], "head_budget_mib must be at most"),
    ("report", ["--results", "{rows}", "--baseline", ""], "--baseline is empty"),
    ("report", ["--results", "{rows}", "--predictions", ""], "--predictions is empty"),
    ("report", ["--results", "{tmp}", "--out", "{rows}"], "is an input"),
    ("report", ["--results", "{rows}", "--baseline", "{base}", "--out", "{base}"], "is an input"),
    ("report", ["--results", "{rows}", "--predictions", "{pred}", "--out", "{pred}"], "is an input"),
    ("report", ["--results", "{rows}", "--out", "{tmp}/link.md"], "is an input"),
    ("report", ["--results", "{rows}", "--out", "{file}/B.md"], "--out"),
    ("report", ["--results", "{rows}", "--out", "{file}/sub/B.md"], "--out"),
    ("report", ["--results", "{rows}", "--out", "{dir}"], "--out"),
    ("report", ["--results", "{rows}", "--out", "{tmp}/newdir/"], "--out"),
    ("report", ["--results", "{rows}", "--out", ""], "--out"),
    ("report", ["--results", "{rows}", "--host-budget-gib", "-1"], "--host-budget-gib 32"),
    ("report", ["--results", "{rows}", "--host-budget-gib", "abc"], "--host-budget-gib 32"),
    ("report", ["--results", "{rows}", "--host-budget-gib", "nan"], "--host-budget-gib 32"),
    ("report", ["--results", "{rows}", "--host-budget-gib", "inf"], "--host-budget-gib 32"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", "{rows}"], "is an input"),
    ("report", ["--results", "{tmp}", "--save-baseline", "--baseline", "{rows}"], "is an input"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", "{file}/b.jsonl"], "--baseline"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", "{dir}"], "--baseline"),
    ("report", ["--results", "{rows}", "--bogus"], "report: unrecognized arguments: --bogus"),
    ("report", ["--results"], "--results"),
    ("report", ["--results", "{rows}", "stray"], "no such results file or folder: stray"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", ""], "--baseline is empty"),
    ("report", ["--results", "{rows}", "--out", "{rows}", "--save-baseline", "--baseline", "{base}"],
     "--out does nothing with --save-baseline"),
    # --- predict
    ("predict", ["model=qwen3_4b", "hardware=h200", "+sweep=cpu_smoke"], "predict makes one row"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus=0"], "e.g. gpus=8"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus=-1"], "e.g. gpus=8"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus=abc"], "e.g. gpus=8"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus=1.5"], "e.g. gpus=8"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus="], "e.g. gpus=8"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "gpus=99999"], "e.g. gpus=8"),
    ("predict", ["model=qwen3_4b", "hardware=cpu", "gpus=8"], "name the hardware"),
    ("predict", ["model=qwen3_4b", "gpus=8"], "name the hardware"),
    ("predict", ["model=qwen3_4b", "hardware=h300", "gpus=8"], "unknown hardware 'h300'"),
    ("predict", ["model=bogus", "hardware=h200"], "unknown model 'bogus'"),
    ("predict", ["hardware=h200", "gpus=8"], "name the model"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "seq_len=abc"], "try seq_len=8192"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "+attn=bogus"], "unknown attn 'bogus'"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "adapter=lora", "adapter.rank=0"], "adapter.rank=16"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "foo=1"], "unknown option 'foo'"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "stray"], "stray"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "--bogus"], "--bogus"),
    ("predict", ["--published", "--out", str(RESULT_INPUT)], "is an input"),
    ("predict", ["--published", "--out", str(PUBLISHED_INPUT)], "is an input"),
    ("predict", ["--published", "--rows", str(RESULT_INPUT)], "is an input"),
    ("predict", ["--published", "--out", "{tmp}/P.md", "--rows", "{tmp}/P.md"], "--rows"),
    ("predict", ["--published", "--out", "{file}/P.md"], "--out"),
    ("predict", ["--published", "--out", "{dir}"], "--out"),
    ("predict", ["--published", "--rows", "{file}/p.jsonl"], "--rows"),
    ("predict", ["--published", "--out"], "--out needs a value"),
    ("predict", ["--published", "--rows", "--out", "{tmp}/P.md"], "--rows needs a value"),
    ("predict", ["--published", "--out", ""], "--out is empty"),
    ("predict", ["--published", "model=qwen3_4b"], "--published takes only --out"),
    ("predict", ["--published", "--out", "{tmp}/a.md", "--out", "{tmp}/b.md"], "give it once"),
    # --- fa3_build (nothing is built, cloned or installed: subprocess is fenced off)
    ("fa3_build", ["--source", ""], "--source: is empty"),
    ("fa3_build", ["--source", "{fa}", "--wheel-dir", "/proc/stepbench-wheels"], "--wheel-dir /proc/stepbench-wheels cannot be made"),
    ("fa3_build", ["--source", "{dir}", "--cutlass", " "], "--cutlass: is empty"),
    ("fa3_build", ["--source", "{tmp}/nope"], "point --source at one"),
    ("fa3_build", ["--source", "{file}"], "point --source at one"),
    ("fa3_build", ["--source", "{dir}"], "point --source at one"),
    ("fa3_build", ["--source", "{fa}", "--jobs", "0"], "--jobs"),
    ("fa3_build", ["--source", "{fa}", "--jobs", "-1"], "--jobs"),
    ("fa3_build", ["--source", "{fa}", "--jobs", "abc"], "--jobs"),
    ("fa3_build", ["--source", "{fa}"], "pass --cutlass PATH"),
    ("fa3_build", ["--source", "{fa}", "--cutlass", "{tmp}/nope"], "point it at a CUTLASS checkout"),
    ("fa3_build", ["--source", "{fa}", "--cutlass", "{file}"], "point it at a CUTLASS checkout"),
    ("fa3_build", ["--source", "{tmp}/nope", "--cutlass", "{tmp}/nope"], "point"),  # either one named
    ("fa3_build", [], "--source"),
    ("fa3_build", ["--source", "{fa}", "--clone", "{tmp}/c"], "--clone"),
    ("fa3_build", ["--clone", "{file}"], "--clone"),
    ("fa3_build", ["--clone", "{fa}"], "no git checkout: name a new (or empty) folder"),
    # round thirteen: a control character printed raw (two lines); git started before the destination failed
    ("fa3_build", ["--source", "{tmp}/a\nb"], "--source '"),
    ("fa3_build", ["--source", "{fa}", "--wheel-dir", "{tmp}/w\tx"], "has a control character (a newline, a tab)"),
    ("fa3_build", ["--clone", "/proc/stepbench-fa"], "--clone /proc/stepbench-fa cannot be made"),
    ("fa3_build", ["--clone", "{file}/fa"], "/afile.txt/fa cannot be made (Not a directory)"),
    ("fa3_build", ["--source", "{fa}", "--wheel-dir", "{file}"], "--wheel-dir"),
    ("fa3_build", ["--source", "{fa}", "--target", "{file}"], "--target"),
    ("fa3_build", ["--source", "{fa}", "--bogus"], "unrecognized arguments: --bogus"),
    # --- peers (+peer=...) and sweep syntax Hydra has but stepbench does not take
    (B, ["+peer=prime_rl"], "add peer.path="),
    (B, ["+peer=prime_rl", "peer.path={file}"], "is not a folder"),
    (B, ["+peer=hf_eager", "+ac=selective"], "+ac=recompute"),
    (B, ["+peer=hf_eager", "+sync=filesystem"], "leave +sync=filesystem out"),
    (B, ["+peer=hf_eager", "peer.liger=1"], "peer.liger=auto"),
    (B, ["+peer=hf_eager", "peer.timeout_s=0"], "peer.timeout_s"),
    (B, ["+peer=hf_eager", "head_budget_mib=64"], "head_budget_mib=64 is an option of stepbench's own step"),
    (B, ["+peer=nope"], "choose one of"),
    (B, ["-m", "model=glob(qwen3_t*)"], "glob() and interval() sweeps are not taken"),
    (B, ["-m", "+peer=none,hf_eager", "peer.precision=bf16"], "not of none"),
    (B, ["+peer=prime_rl", "peer.path=/nonexistent/prime-rl"], "is not a folder"),
    (B, ["+peer=prime_rl", "peer.path=~/x"], "inside the shell's quotes"),
    (B, ["+peer=hf_eager", "peer.precision=fp8"], "peer.precision=amp"),
    (B, ["+peer=hf_eager", "packing=random"], "packing=single"),
    (B, ["+peer=hf_eager", "peer.path=/x"], "+peer=prime_rl"),
    (B, ["+peer=hf_eager", "+ac=offload_attention"], "+ac=recompute"),
    (B, ["+peer=hf_eager", "fuse=false"], "fuse=false is an option of stepbench's own step"),
    (B, ["+peer=hf_eager", "ac.inside=false"], "ac.inside=false is an option of stepbench's own step"),
    (B, ["+peer=hf_eager", "+kernels=inductor"], "kernels=inductor is an option of stepbench's own step"),
    (B, ["+peer=hf_eager", "measure_s=5"], "leave measure_s out"),
    (B, ["+peer=hf_eager", "compile=true"], "+peer=hf_compiled compiles"),
    (B, ["+peer=hf_compiled", "compile=false"], "+peer=hf_eager does not"),
    (B, ["+peer=hf_eager", "max_memory_gib=10"], "leave max_memory_gib out"),
    (B, ["+peer=hf_eager", "max_host_gib=1"], "leave max_host_gib out"),
    (B, ["+peer=hf_eager", "busy_step=false"], "leave busy_step out"),
    (B, ["+ac=offlaod"], "(e.g. +ac=offload)"),
    (B, ["adapter=LoRA"], "(e.g. adapter=lora)"),
    (B, ["results=/proc/stepbench-x.jsonl"], "one of the kernel's files (/proc)"),
    ("report", ["--results", "{rows}", "--out", "/proc/stepbench-report.md"], "one of the kernel's files (/proc)"),
    ("report", ["--results", "{rows}", "--predictions", "{tmp}/missing-predictions"], "does not exist"),
    ("report", ["--results", "{rows}", "--baseline", "/dev/null"], "is not a regular file"),
    ("report", ["--results", "{rows}", "--predictions", "{dir}"], "holds no .jsonl file"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", "{tmp}/b.jsonl", "--out", "{tmp}/x.md"],
     "--out does nothing with --save-baseline"),
    (B, ["hardware_as_label=true"], "add hardware=h100"),
    (B, ["+ac=none", "ac.mode=selective"], "ac.mode=selective does nothing for +ac=none"),
    (B, ["+ac=offload", "ac.inside=false"], "leave ac.inside out"),
    (B, ["compile=false", "compile_head=false"], "leave compile_head out"),
    (B, ["+sync=filesystem", "sync.writer=write", "sync.unmap=inline", "sync.dir={tmp}/w"], "leave sync.unmap out"),
    ("report", ["--results", "{rows}", "--out", "{tmp}/a\nb.md"], "has a control character"),
    ("report", ["--results", "{rows}", "--predictions", "{rows}"], "holds no"),
    ("predict", ["model=qwen3_4b", "hardware=h200", "+peer=hf_eager"], "leave +peer out"),
    # --- the stepbench script
    ("cli", ["benchh"], "did you mean 'stepbench bench'?"),
    ("cli", ["report", "--results", "{rows}", "--host-budget-gib", "abc"], "--host-budget-gib 32"),
    ("cli", ["predict", "model=qwen3_4b", "hardware=h200", "gpus=0"], "e.g. gpus=8"),
    ("cli", ["fa3-build", "--source", "{fa}", "--jobs", "0"], "--jobs"),
    # --- round six: contradictions, sweeps that would measure nothing, the console's prefix
    (B, ["model.family=qwen3_moe"], "a model's family comes with its entry"),
    (B, ["-m", "seed=3,4"], "seed is not part of a row's key"),
    (B, ["-m", "tag=a,b"], "add redo=true to measure each"),
    (B, ["-m", "steps=2,3"], "steps is not part of a row's key"),
    (B, ["adapter=lora", "fuse=true"], "it is fuse=lora, the default"),
    (B, ["model=hf_qwen3_tiny", "fuse=false"], "the hf family runs its own modules"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "+sync=filesystem", "sync.dir=/proc/stepbench-x"],
     "which sync.dir does not change"),
    ("cli", ["fa3-build", "--source", "{tmp}/nothere"], "stepbench fa3-build: "),
    # --- round seven: options that do nothing here, destinations that hold something else
    (B, ["+ac=selective", "ac.save=[]"], "which is +ac=recompute"),
    (B, ["+ac=selective", "ac.save=[no_such_op_xyz]"], "matches no operator"),
    (B, ["+sync=filesystem", "sync.dir={tmp}/w", "sync.writer=write", "sync.touch=false"], "maps nothing"),
    (B, ["compile_head=false"], "this row compiles nothing"),
    (B, ["-m", "seed=0,1", "redo=true", "results={notjson}"], "holds something other than rows"),
    (B, ["-m", "+attn=sdpa", "results={dir}"], "is a directory"),
    (B, ["+sync=filesystem", "sync.dir={tmp}/a\tb"], "has a control character (a newline, a tab)"),
    ("predict", ["model=qwen3_4b", "hardware=tpu"], "predict for hardware=h100, h200, b200 or a6000"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "hardware.memory_gib=0"], "try hardware.memory_gib=79.2"),
    (B, ["busy_step=false"], "leave busy_step out"),
    (B, ["+ac=recompute", "max_host_gib=0.001"], "pins none: leave max_host_gib out"),
    (B, ["hardware=h100", "hardware_as_label=true"], "leave hardware= out and hardware_as_label out"),
    (B, ["model=auto", "seq_len=1024", "packing=fixed:600"], "fill no more than one of the row's 512 tokens"),
    (B, ["results={file}"], "holds something other than rows"),
    (B, ["+sweep=cpu_smoke", "seq_len=128,256"], "+sweep=... takes its rows from conf/sweep/"),
    ("report", ["--results", "{base}", "--save-baseline", "--baseline", "{file}"], "holds something other than a baseline"),
    ("report", ["--results", "{base}", "--out", "{rows}"], "holds something other than a stepbench report"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "packing=random"], "changes nothing in a prediction"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "hardware_as_label=true"], "changes nothing in a prediction"),
    ("cli", ["--version", "extra"], "--version takes nothing else"),
    ("cli", ["help", "bogus"], "help takes nothing else"),
    # --- round nine
    (B, ["+sync=host", "sync.overlap=true"], "leave sync.overlap out"),
    (B, ["results=-"], "would make a file named '-'"),
    (B, ["results={notrow}"], "holds something other than rows"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "+sync=nccl", "sync.verify=true"], "leave sync.verify out"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "hardware.peak_flops=1e-320"], "is outside what a GPU has"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "gpus=8", "hardware.link_gbps=1e-300"], "is outside what a GPU has"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "max_memory_gib=10"], "changes nothing in a prediction"),
    ("cli", ["report", "--results", "{base}", "--save-baseline", "--out", "{tmp}/x.md", "--baseline", "{tmp}/b.jsonl"],
     "stepbench report: --out does nothing"),
    ("cli", ["bench", "--info", "model=nope"], "--info takes one of"),
    ("cli", ["bench", "--cfg", "job", "model=nope"], "unknown model 'nope'"),
    ("fa3_build", ["--source", "{fa_busy}", "--cutlass", "{cut}", "--no-install", "--wheel-dir", "{tmp}/wh"],
     "holds something other than a CUTLASS checkout"),
    ("fa3_build", ["--source", "{fa}", "--no-install", "--no-test"], "leave --no-test out"),
    # --- round eight
    (B, ["+sync=nccl", "sync.backend=gloo", "sync.receiver_device=cuda"], "cpu or cuda:N"),
    (B, ["+sync=nccl", "sync.receiver_device=bogus"], "cpu or cuda:N"),
    (B, ["+ac=selective", "ac.save=[\".*\"]"], "matches in-place operators"),
    (B, ["+ac=selective", "ac.mode=full", "ac.save=[matmul]"], "leave ac.save out"),
    (B, ["+ac=offload_selective", "ac.mode=attention", "ac.save=[matmul]"], "leave ac.save out"),
    (B, ["fuse=false"], "adds none"),
    (B, ["+peer=hf_eager", "adapter=lora", "adapter.replicate=false"], "adapter.replicate=false is an option of stepbench's"),
    (B, ["model=hf_qwen3_tiny", "model.plain=true", "+attn=sdpa", "+ac=recompute", "ac.inside=false"], "leave ac.inside out"),
    (B, ["model=hf_qwen3_tiny", "model.plain=true", "+attn=sdpa", "head_budget_mib=64"], "leave head_budget_mib out"),
    (B, ["+hardware.memory_gib=1"], "hardware=auto takes the detected profile as it is"),
    (B, ["+sync=host", "sync.gather_mib=64"], "this row runs one process"),
    (B, ["model=auto", "model.by_device.cpu.max_seq_len=200"], "a multiple of 128"),
    (B, ["model=auto", "model.by_device.cpu.family.x=1"], "model.by_device.cpu.family is a value (qwen3)"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "compile=false"], "leave compile out"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "+attn=fa2", "attn.via=varlen"], "leave attn.via out"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "+gpus=8"], "without + or ~"),
    # round thirteen: FA3 (SM90 only) predicted on an A6000; the profiles it runs on come from their capability
    ("predict", ["model=qwen3_4b", "hardware=a6000", "+attn=fa3"],
     "+attn=fa3 does not run on A6000: FA3 needs an SM90 GPU (this is SM86); use +attn=fa2, or predict for "
     "hardware=h100 or h200"),
    ("predict", ["model=qwen3_4b", "hardware=b200", "+attn=fa3", "gpus=8"], "(this is SM100)"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "+attn=fa3", "hardware.capability=abc"],
     "hardware.capability=abc is not a CUDA compute capability"),
    ("cli", ["bench", "--resolve"], "--resolve goes with --cfg"),
    ("cli", ["bench", "--cfg", "job", "--package", "x"], "stepbench does not take it"),
    ("fa3_build", ["--source", "{fa}", "--wheel-dir", ""], "--wheel-dir: is empty"),
    ("fa3_build", ["--source", "{fa}", "--no-install", "--target", "{tmp}/t"], "leave --target out"),
    (B, ["adapter=lora", "adapter.replicate=true"], "what adapter.replicate=auto does in one process"),
    (B, ["adapter=lora", "adapter.targets=[]"], "is not a list of layer names"),
    (B, ["adapter=lora", "adapter.targets=q_proj"], "is not a list of layer names"),
    (B, ["adapter=lora", "adapter.targets=[q_proj,bogus]"], "names bogus, which qwen3-tiny has no linear layer of"),
    (B, [*hf("ok.json"), "model.hf_name=Qwen/Qwen3-4B"], "names no model of conf/model/"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "+sync=filesystem", "sync.keep=3"], "sync.keep=3: the predictor"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "+sync=filesystem", "sync.fsync=true"], "sync.fsync=true: the"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "gpus=8", "+sync=host", "sync.gather_mib=64"], "which sync.gather_mib"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "adapter=lora", "adapter.replicate=true"], "adapter.replicate=true: the"),
    (B, hf("type_list.json"), "model_type is \"['qwen3']\", not a name"),
    (B, ["-m", "seq_len=128,128", "redo=true"], "lists 128 twice"),
    # --- round eleven: a sweep's rows resolved before the first runs (core.sweepcheck)
    (B, ["-m", "+peer=none,prime_rl", "+attn=sdpa"], "the row +peer=prime_rl: peer 'prime_rl': peer prime_rl runs a"),
    (B, ["-m", f"model.config={{tmp}}/ok.json,{{tmp}}/heads_not_divide.json", "model=hf"], "the row model.config="),
    (B, ["-m", "model=qwen3_tiny,hf_qwen3_tiny", "adapter=lora", "fuse=false"], "the row model=hf_qwen3_tiny: fuse=false"),
    (B, ["-m", "model=qwen3_tiny,hf_qwen3_tiny", "+kernels=inductor"], "the row model=hf_qwen3_tiny: kernels 'inductor'"),
]

#: bench cases also run as ``python -m core.bench`` (end to end: status, stderr, results untouched)
SUBPROCESS = [
    ["foo=1"], ["+attn=bogus"], ["attn=fa3"], ["seq_len=0"], ["adapter=lora", "adapter.rank=0"], ["hardware=h100"],
    ["results={dir}"], ["results={file}/rows.jsonl"], ["seed=99999999999999999999"], ["model=hf"],
    ["packing=fixed:0"], [*hf("zero_heads.json")],
    ["-m", "+peer=none,prime_rl", "+attn=sdpa"],
]


# ----------------------------------------------------------------------------------- fixtures
def _layout(tmp: Path) -> dict:
    """The files the table's placeholders name."""
    (tmp / "res.jsonl").write_bytes(RESULTS_BEFORE)
    (tmp / "afile.txt").write_text("a file, not a folder\n")
    (tmp / "adir").mkdir()
    (tmp / "notjson.jsonl").write_text("this is not JSON\n")
    (tmp / "notrow.json").write_text('{"keep": 1}\n')  # JSON, and not a row
    (tmp / "rows.jsonl").write_text(json.dumps(FAILED_ROW) + "\n")
    (tmp / "base.jsonl").write_text(json.dumps({"model": "x", "type": "RL Full", "tps": 1.0}) + "\n")
    (tmp / "pred.jsonl").write_text(json.dumps({"kind": "prediction", "tps": 1.0}) + "\n")
    (tmp / "link.md").symlink_to(tmp / "rows.jsonl")
    os.mkfifo(tmp / "fifo")
    (tmp / "dangle.jsonl").symlink_to(tmp / "missing" / "rows.jsonl")
    (tmp / "loop.jsonl").symlink_to(tmp / "loop.jsonl")
    fa = tmp / "fa"
    (fa / "hopper" / "instantiations").mkdir(parents=True)
    (fa / "hopper" / "setup.py").write_text("raise SystemExit('never built in tests')\n")
    (fa / "csrc" / "cutlass").mkdir(parents=True)
    busy = tmp / "fa_busy"  # a checkout whose csrc/cutlass holds a file that is not CUTLASS
    (busy / "hopper" / "instantiations").mkdir(parents=True)
    (busy / "hopper" / "setup.py").write_text("raise SystemExit('never built in tests')\n")
    (busy / "csrc" / "cutlass").mkdir(parents=True)
    (busy / "csrc" / "cutlass" / "README").write_text("mine\n")
    (tmp / "cut" / "include" / "cutlass").mkdir(parents=True)
    for name, body in HF_CONFIGS.items():
        (tmp / name).write_text(body if isinstance(body, str) else json.dumps(body))
    return {"tmp": str(tmp), "res": str(tmp / "res.jsonl"), "file": str(tmp / "afile.txt"),
            "dir": str(tmp / "adir"), "notjson": str(tmp / "notjson.jsonl"), "rows": str(tmp / "rows.jsonl"),
            "base": str(tmp / "base.jsonl"), "pred": str(tmp / "pred.jsonl"), "fa": str(fa),
            "fa_busy": str(busy), "cut": str(tmp / "cut"),
            "notrow": str(tmp / "notrow.json")}


def _fill(argv: list[str], where: dict) -> list[str]:
    return [a.format(**where) for a in argv]


def _snapshot(tmp: Path) -> dict:
    """Every file under the test's folder and the repository files a case names, with its bytes."""
    files = [p for p in tmp.rglob("*") if p.is_file() or p.is_symlink()]
    return {p: (p.read_bytes() if p.is_file() else None) for p in files + [RESULT_INPUT, PUBLISHED_INPUT]}


def _bench_argv(args: list[str], where: dict) -> list[str]:
    """The tiny CPU row, with the case's overrides in place of the defaults they name."""
    keys = {a.split("=", 1)[0].lstrip("+") for a in args if "=" in a}
    base = [f"{k}={v}" for k, v in TINY.items() if k not in keys]
    if "results" not in keys:
        base.append(f"results={where['res']}")
    if "model" in keys:  # a model of the case's own: its own seq_len limits
        base = [a for a in base if not a.startswith("seq_len=")] + (["seq_len=128"] if "seq_len" not in keys else [])
    return base + _fill(args, where)


def _own_outputs(tool: str, args: list[str]) -> list[str]:
    """A report case writes (if it wrongly writes at all) into the test's folder, never into the
    repository's benchmarks/ (its defaults)."""
    if tool == "cli" and args and args[0] == "report":
        return ["report", *_own_outputs("report", args[1:])]
    if tool != "report":
        return args
    if "--save-baseline" in args:  # it writes the baseline only (the report's options are refused with it)
        return [*args, *(["--baseline", "none"] if "--baseline" not in args else [])]
    extra = {"--out": "{tmp}/B.md", "--baseline": "none", "--predictions": "none"}
    return [*args, *(x for k, v in extra.items() if k not in args for x in (k, v)), "--no-plots"]


def _bench_in_process(argv: list[str]) -> tuple[int, str]:
    """What ``python -m core.bench ARGV`` checks before it allocates anything, in this process:
    (status, the line it would print)."""
    from core.bench import check_overrides, gpu_record, without_info_flags
    from core.resolve import UserError, first_line, resolve
    from core.results import ResultsError, check_writable

    try:
        cfg = check_overrides(without_info_flags(argv))
    except UserError as e:
        return 2, str(e)
    except Exception as e:  # core.bench.main reduces Hydra's own errors to one line
        return 2, f"bad override: {first_line(e)}"
    try:
        r = resolve(cfg)
        check_writable(cfg.results)
        gpu_record(cfg.results, r.ctx.device)
        if r.peer is not None:
            from core import peers

            peers.check(cfg, r)
    except (UserError, ResultsError) as e:
        return 2, str(e)
    return 0, ""


def _call(tool: str, argv: list[str], monkeypatch) -> int:
    def fenced(*a, **k):
        raise AssertionError(f"fa3_build ran a command on bad input: {a[0] if a else k}")

    if tool in ("fa3_build", "cli"):
        from core import fa3_build

        monkeypatch.setattr(fa3_build, "subprocess", SimpleNamespace(run=fenced))
    try:
        if tool == "report":
            from core.report import main
        elif tool == "predict":
            from core.predict import main
        elif tool == "fa3_build":
            from core.fa3_build import main
        else:
            from core.cli import main
        return main(argv)
    except SystemExit as e:  # argparse and the stepbench script exit
        return e.code if isinstance(e.code, int) else 1


def _case_id(case) -> str:
    tool, argv, _ = case
    text = " ".join(a.replace("{", "").replace("}", "") or "''" for a in argv)
    return f"{tool}: {text}"[:90]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_one_line_status_2(case, tmp_path, capsys, monkeypatch):
    tool, args, needle = case
    where = _layout(tmp_path)
    before = _snapshot(tmp_path)
    try:
        if tool == B:
            capsys.readouterr()
            status, line = _bench_in_process(_bench_argv(args, where))
            err = capsys.readouterr().err  # anything else the checks printed is a second line
            lines = [ln for ln in ([line] if line else []) + err.splitlines() if ln.strip()]
            line_ok = "\n" not in line
        else:
            capsys.readouterr()
            status = _call(tool, _fill(_own_outputs(tool, args), where), monkeypatch)
            lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
            line_ok = True
        after = _snapshot(tmp_path)
    finally:
        for p, data in before.items():  # never leave a repository input written over
            if p.is_relative_to(ROOT) and data is not None and (not p.is_file() or p.read_bytes() != data):
                p.write_bytes(data)
    assert status == 2, (status, lines)
    assert len(lines) == 1 and line_ok, lines
    assert needle in lines[0], lines[0]
    assert "Traceback" not in lines[0]
    changed = [str(p) for p, data in before.items() if after.get(p, b"<removed>") != data]
    assert not changed, f"written over or removed: {changed}"
    assert set(after) == set(before), f"created: {sorted(map(str, set(after) - set(before)))}"


def _run_bench(args: list[str], tmp: Path) -> tuple[subprocess.CompletedProcess, dict, dict]:
    from core.sweep import RUN_ENV

    where = _layout(tmp)
    before = _snapshot(tmp)
    env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-m", "core.bench", *_bench_argv(args, where)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=300)
    return p, before, _snapshot(tmp)


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory):
    """Every SUBPROCESS case, two at a time (each is a fresh Python that imports torch)."""
    dirs = [tmp_path_factory.mktemp("bench") for _ in SUBPROCESS]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(_run_bench, SUBPROCESS, dirs))


@pytest.mark.parametrize("i", range(len(SUBPROCESS)), ids=[" ".join(a) for a in SUBPROCESS])
def test_bench_end_to_end(bench_runs, i):
    p, before, after = bench_runs[i]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("stepbench: "), p.stderr
    (expected,) = [c[2] for c in CASES if c[0] == B and c[1] == SUBPROCESS[i]]
    assert expected in lines[0]
    assert after == before, "the results file (or another file) changed"
    assert p.stdout.strip() == "", p.stdout  # no row printed


#: bench command lines Hydra would answer with its own multi-line error (a word without '=', an
#: unknown flag): refused by core.bench first, one line
HYDRA_LEFT = [["foo"], ["seq_len"], ["--bogus"]]


@pytest.mark.parametrize("args", HYDRA_LEFT, ids=[" ".join(a) for a in HYDRA_LEFT])
def test_bench_words_and_flags_hydra_does_not_know(args, tmp_path):
    p, before, after = _run_bench(args, tmp_path)
    assert after == before  # nothing appended even now
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr)


def test_the_table_is_big_enough():
    tools = {c[0] for c in CASES}
    assert len(CASES) >= 150 and {"bench", "report", "predict", "fa3_build"} <= tools
    assert len({(c[0], tuple(c[1])) for c in CASES}) == len(CASES), "a case is listed twice"


#: the environment a launcher sets, wrong (round seven): one line before anything starts
LAUNCH = [
    ({"STEPBENCH_RUN_ID": "a\nb"}, "is not a run id"),
    ({"STEPBENCH_GIT_COMMIT": "not a sha"}, "is not a commit"),
    ({"STEPBENCH_GIT_DIRTY": "maybe"}, "is not 0 or 1"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "x"}, "MASTER_ADDR and MASTER_PORT not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}, "0 <= RANK < WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}, "not started by torchrun"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 is no GPU index"),
    ({"WORLD_SIZE": "1", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "http"}, "is not a port"),
    ({"STEPBENCH_CHILD_ROW_ID": "/tmp/victim"}, "is not a row id"),
    ({"STEPBENCH_CHILD_ROW_ID": ".."}, "is not a row id"),
    # round fourteen: a row id typed by hand (every row would reuse it), or with a pid that started nothing
    ({"STEPBENCH_CHILD_ROW_ID": "abc"}, "this row was not started by one"),
    ({"STEPBENCH_CHILD_ROW_ID": "abc", "STEPBENCH_CHILD_OF": "4194305"}, "this row was not started by one"),
    ({"STEPBENCH_GIT_COMMIT": "abcdef1-dirty", "STEPBENCH_GIT_DIRTY": "0"}, "drop -dirty, or set STEPBENCH_GIT_DIRTY=1"),
    ({"STEPBENCH_GIT_COMMIT": "ABCDEF1"}, "7 to 40 lowercase hex digits"),
    ({"TORCHINDUCTOR_CACHE_DIR": "/proc/nope"}, "TORCHINDUCTOR_CACHE_DIR=/proc/nope cannot take inductor's files"),
    ({"TORCHINDUCTOR_CACHE_DIR": str(RESULT_INPUT)}, "cannot take inductor's files"),  # round fifteen: a file
]


@pytest.mark.parametrize("env,needle", LAUNCH, ids=[" ".join(f"{k}={v}" for k, v in e.items()) for e, _ in LAUNCH])
def test_launch_environment_checked_first(env, needle):
    from core.bench import check_launch
    from core.resolve import UserError

    with pytest.raises(UserError) as e:
        check_launch(env)
    assert needle in str(e.value) and "\n" not in str(e.value)
    check_launch({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500",
                  "TORCHELASTIC_RUN_ID": "none", "STEPBENCH_CHILD_ROW_ID": "0f3a9c_row-1",
                  "STEPBENCH_CHILD_OF": str(os.getppid())})  # what torchrun and a sweep set passes


def test_auto_attention_with_nothing_to_pick_is_refused_before_the_row(monkeypatch):
    """A blocklist that leaves attn=auto no backend: refused by its availability check (resolve),
    not as a failed row after the model is built."""
    import core.plugins
    from core.contracts import RunContext
    from plugins.attention.auto import why_not

    class Nothing:
        def names(self, kind):
            return []

    assert why_not(RunContext("cpu")) is None  # sdpa is registered here
    monkeypatch.setattr(core.plugins, "registry", lambda: Nothing())
    assert "STEPBENCH_BLOCK_PLUGINS" in why_not(RunContext("cpu"))


def test_fa3_build_with_a_cuda_home_that_has_no_nvcc(tmp_path, monkeypatch, capsys):
    """CUDA_HOME pointing nowhere: one line before the build starts (it ran 13 lines of pip's
    output before, round seven)."""
    fa = tmp_path / "fa"
    (fa / "hopper" / "instantiations").mkdir(parents=True)
    (fa / "hopper" / "setup.py").write_text("raise SystemExit('never built in tests')\n")
    (fa / "csrc" / "cutlass" / "include" / "cutlass").mkdir(parents=True)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nowhere"))
    assert _call("fa3_build", ["--source", str(fa), "--no-install", "--wheel-dir", str(tmp_path / "wh")],
                 monkeypatch) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "has no bin/nvcc" in lines[0], lines
    assert not (tmp_path / "wh").exists()


def test_fa3_build_changes_no_checkout_before_its_checks(tmp_path, monkeypatch, capsys):
    """Without a CUDA toolkit the build is refused before csrc/cutlass is linked (round eight: the
    checkout's empty folder, or a user's link, was replaced first)."""
    from core import fa3_build

    fa = tmp_path / "fa"
    (fa / "hopper" / "instantiations").mkdir(parents=True)
    (fa / "hopper" / "setup.py").write_text("raise SystemExit('never built in tests')\n")
    (fa / "csrc" / "cutlass").mkdir(parents=True)
    (tmp_path / "cut" / "include" / "cutlass").mkdir(parents=True)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(fa3_build.shutil, "which", lambda name: None)
    assert _call("fa3_build", ["--source", str(fa), "--cutlass", str(tmp_path / "cut"), "--no-install",
                               "--wheel-dir", str(tmp_path / "wh")], monkeypatch) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nvcc is not on PATH" in lines[0], lines
    target = fa / "csrc" / "cutlass"
    assert target.is_dir() and not target.is_symlink() and not any(target.iterdir())


def test_lora_alpha_takes_a_real_number():
    """adapter.alpha is peft's lora_alpha, a float: 8.5 is taken (it was refused as "an integer")."""
    from core.bench import check_overrides

    cfg = check_overrides(["adapter=lora", "adapter.alpha=8.5", "model=qwen3_tiny", "device=cpu"])
    assert cfg.adapter.alpha == 8.5


def test_autoload_switch_reads_false_as_off(monkeypatch):
    """STEPBENCH_DISABLE_PLUGIN_AUTOLOAD=false leaves autoloading on (only a true value disables it)."""
    from core import paths

    for off, disabled in (("false", False), ("0", False), ("no", False), ("1", True), ("true", True)):
        monkeypatch.setenv("STEPBENCH_DISABLE_PLUGIN_AUTOLOAD", off)
        assert paths.autoload_disabled() is disabled, off


def test_sweep_check_lets_rows_this_machine_cannot_run_through():
    """core.sweepcheck refuses a sweep for a row its own checks would refuse for its input, but not
    for one this machine cannot run (a predicted peak above max_memory_gib, FA3 on a CPU): such a
    row still runs, and fails as a row, beside the others."""

    def check(fixed, combos):
        return subprocess.run([sys.executable, "-m", "core.sweepcheck"], cwd=ROOT, capture_output=True, text=True,
                              input=json.dumps({"fixed": fixed, "combos": combos}), timeout=300)

    not_here = check(["model=qwen3_tiny", "device=cpu"], [["max_memory_gib=0.01", "+attn=sdpa"],
                                                          ["max_memory_gib=64", "+attn=fa3"]])
    assert not_here.returncode == 0 and not not_here.stderr.strip(), not_here.stdout + not_here.stderr[-2000:]
    bad = check(["device=cpu", "+attn=sdpa"], [["model=qwen3_tiny", "fuse=false"], ["model=hf_qwen3_tiny", "fuse=true"]])
    assert bad.returncode == 2, bad.stdout + bad.stderr[-2000:]
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]  # round fourteen: on stderr, as every refusal
    assert len(lines) == 1 and not bad.stdout.strip(), bad.stdout + bad.stderr
    assert lines[0].startswith("stepbench: the row model=qwen3_tiny fuse=false: fuse=false unfuses"), lines


def test_a_short_write_leaves_no_torn_row(tmp_path, monkeypatch):
    """A full disk writes part of the row and then fails: append_row raises and the file is as it
    was (the measured row is then kept apart by the caller, core.results.rescue_row)."""
    from core import results

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n')
    real = os.write

    def short(fd, data):
        if len(data) > 10:
            return real(fd, data[:10])  # the first call: part of the line
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.os, "write", short)
    with pytest.raises(OSError, match="No space left"):
        results.append_row(path, {"b": 2, "c": "x" * 50})
    assert path.read_text() == '{"a": 1}\n'
    calls = iter([5, 0])  # a write that takes nothing without raising is an error too
    monkeypatch.setattr(results.os, "write", lambda fd, data: next(calls))
    with pytest.raises(OSError, match="wrote 5 of the row"):
        results.append_row(path, {"b": 2})
    assert path.read_text() == '{"a": 1}\n'


def test_a_child_stalled_mid_line_is_stopped_at_its_deadline():
    """core.sweep.stream_child (row_timeout_s, peer.timeout_s): a child that wrote half a line and
    stalls is stopped at the deadline, not when (if ever) it ends the line; its half line is kept."""
    import io
    import time

    from core.sweep import stream_child

    code = "import sys, time; print('one'); sys.stdout.write('downloading 12%'); sys.stdout.flush(); time.sleep(60)"
    out, t = io.StringIO(), time.time()
    rc, tail = stream_child([sys.executable, "-c", code], dict(os.environ), timeout_s=2, out=out)
    assert rc == -1 and time.time() - t < 10
    assert tail[:2] == ["one", "downloading 12%"] and tail[-1].startswith("TimeoutError: the row exceeded 2 s")


def test_a_sweep_whose_results_stop_taking_rows_stops_with_one_line(tmp_path, monkeypatch):
    """core.sweep.append_or_stop: the failed row a sweep writes itself, on a results file that no
    longer takes rows (a full disk), is kept apart and the sweep stops with one line (status 2 in
    core.bench), never a traceback."""
    from core import results, sweep
    from core.errors import UserError

    monkeypatch.chdir(tmp_path)
    real = results.append_row

    def full(path, row):
        if Path(path).name == "rows.jsonl":
            raise OSError(28, "No space left on device")
        real(path, row)

    monkeypatch.setattr(results, "append_row", full)
    with pytest.raises(UserError, match="did not take a row .*No space left.*the row is in .*stepbench-row-x1.jsonl"):
        sweep.append_or_stop(str(tmp_path / "rows.jsonl"), {"id": "x1", "status": "failed"})
    assert json.loads((tmp_path / "stepbench-row-x1.jsonl").read_text())["id"] == "x1"


def test_outputs_that_belong_together_are_written_both_or_neither(tmp_path, monkeypatch):
    """core.results.write_all_atomic (predict --published's table and rows): the second failing (a
    full disk) leaves neither written and no temporary file behind."""
    from core import results

    (tmp_path / "P.md").write_text("old table\n")
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space"):
        results.write_all_atomic([(tmp_path / "P.md", "new table\n"), (tmp_path / "p.jsonl", "{}\n")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P.md"] and (tmp_path / "P.md").read_text() == "old table\n"


@pytest.mark.parametrize("sig,line,status", [
    ("SIGINT", "interrupted (Ctrl-C)", 130),
    ("SIGTERM", "terminated (SIGTERM)", 143),  # round twelve: it said Ctrl-C and 130
])
def test_ctrl_c_inside_a_long_kernel_ends_the_row_within_its_grace(sig, line, status):
    """core.errors.watch_ctrl_c: the main thread in one long torch call (Python would raise
    KeyboardInterrupt only when it returns) still ends with one line and status 130 soon after
    Ctrl-C; a second Ctrl-C after the first is handled adds no traceback (ignore_further_ctrl_c)."""
    import signal
    import time

    code = ("import sys, torch; from core.errors import raise_on_ctrl_c, watch_ctrl_c; raise_on_ctrl_c(); "
            "watch_ctrl_c('stepbench', grace_s=1.0); torch.set_num_threads(1); a = torch.rand(1500, 1500) / 1500; "
            "print('ready', flush=True); torch.linalg.matrix_power(a, 2 ** 40 - 1); print('returned', flush=True)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    t = time.time()
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate(timeout=60)
    assert p.returncode == status and time.time() - t < 20, (p.returncode, err[-2000:])
    assert err.strip().splitlines() == [f"stepbench: {line} inside a long kernel: stopped; rows that "
                                        "finished are in the results"] and "returned" not in out


def test_a_changed_or_own_config_is_named_by_its_fingerprint(tmp_path):
    """hf rows: an entry with a config field changed, or a config.json of one's own, is named by its
    config's fingerprint, so two models are never one row key (a sweep would skip the second) and
    model.hf_name cannot put another model's name on a config."""
    from plugins.models import hf

    def name(node):
        return hf.from_config({"model": {"family": "hf", **node}}).name

    cfg = json.loads(hf._entries()["hf_qwen3_tiny"][1])
    assert name({"flavour": "qwen3-tiny", "config": cfg}) == "qwen3-tiny (hf)"
    four = name({"flavour": "qwen3-tiny", "config": {**cfg, "num_hidden_layers": 4}})
    two = name({"flavour": "qwen3-tiny", "config": {**cfg, "num_hidden_layers": 1}})
    assert four != two and four.startswith("qwen3-tiny [config ") and four.endswith("] (hf)")
    with pytest.raises(ValueError, match="names conf/model/hf_qwen3_4b.yaml, whose config this one is not"):
        name({"flavour": "qwen3-tiny", "config": cfg, "hf_name": "Qwen/Qwen3-4B-Instruct-2507"})
    with pytest.raises(ValueError, match="names no model of conf/model/"):
        name({"config": cfg, "hf_name": "Qwen/Qwen3-4B"})


@pytest.mark.parametrize("opt", ["steps=50", "seed=7"])
def test_prime_rl_refuses_steps_and_seed_its_bench_mode_ignores(tmp_path, opt):
    """prime-rl's bench mode runs four steps from its own seed: another steps= or seed= would be
    stored in the row and not run, so the row is refused before anything starts."""
    script = tmp_path / "prime-rl" / "src" / "prime_rl" / "trainer" / "rl" / "train.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    status, line = _bench_in_process(["+peer=prime_rl", f"peer.path={tmp_path / 'prime-rl'}", "model=qwen3_tiny",
                                      "+attn=sdpa", "device=cpu", opt, f"results={tmp_path / 'r.jsonl'}"])
    assert status == 2 and f"{opt} changes nothing for +peer=prime_rl" in line and "leave" in line, line
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.skipif(not __import__("shutil").which("git"), reason="needs git")
def test_fa3_build_clone_leaves_another_repositorys_checkout_alone(tmp_path, capsys):
    """--clone naming a git checkout of another repository is refused before any git command that
    would switch its commit."""
    from core.fa3_build import main

    repo = tmp_path / "mine"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "remote", "add", "origin", "https://example.com/me/mine.git"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    (repo / "work.txt").write_text("mine\n")
    capsys.readouterr()
    assert main(["--clone", str(repo), "--no-install"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "is a git checkout of https://example.com/me/mine.git, not of" in err[0], err
    assert (repo / "work.txt").read_text() == "mine\n"


@pytest.mark.parametrize("body,first", [
    ({"name": "x"}, "has no list of rows (rows: None)"),
    ({"rows": [42, ["a", "b"]]}, "row 1 is 42, not a line of overrides"),
    ({"rows": ["steps=2", {"x": 1}]}, "row 2 is {'x': 1}, not a line of overrides"),
    ({"rows": ["model=qwen3_tiny tag='oops"]}, "cannot be split into overrides (No closing quotation)"),
    ({"rows": "model=qwen3_tiny steps=2"}, "has no list of rows (rows: 'model=qwen3_tiny steps=2')"),
    ({"rows": []}, "lists no rows, so the sweep would measure nothing"),
    ({"rows": ["steps=2"], "seq_len": 999}, "has 'seq_len', which a sweep file does not take"),
    ({"rows": ["  "]}, "row 1 is '  ', not a line of overrides"),
])
def test_a_malformed_sweep_file_is_one_line_before_any_row(body, first):
    """Round twelve: a +sweep= file without a list of override lines gave a traceback, or ran each
    character of a string as a failed row; an empty list or a stray key did nothing, silently."""
    from omegaconf import OmegaConf

    from core.resolve import UserError
    from core.sweep import sweep_file_rows

    with pytest.raises(UserError) as e:
        sweep_file_rows(OmegaConf.create(body), "mine")
    assert first in str(e.value) and "\n" not in str(e.value) and "+sweep=mine" in str(e.value)
    assert sweep_file_rows(OmegaConf.create({"name": "ok", "rows": ["a=1 'b=c d'"]}), "ok") == [["a=1", "b=c d"]]


def test_a_results_file_that_ends_in_other_text_is_refused(tmp_path):
    """Round twelve: a row on line 1 and other text after it passed the check (only the first line
    was read), and the row was appended after the text. A torn last row (a crash) is still taken."""
    from core.results import ResultsError, check_writable

    res = tmp_path / "rt.jsonl"
    res.write_text('{"status": "ok", "model": "m"}\nmy diary entry\n')
    with pytest.raises(ResultsError, match="ends with a line that is not a row \\('my diary entry'\\)"):
        check_writable(res)
    res.write_text('{"status": "ok", "model": "m"}\n{"ac": "Recomp')
    assert check_writable(res) == res.resolve()


#: round thirteen (tests/test_hostile.py's table machinery, the bench's checks in this process)
CASES_13 = [
    (B, ["hydra/job_logging=none"], "Hydra's own settings are stepbench's"),
    (B, ["peer.name=hf_eager"], "type +peer=hf_eager"),
    (B, ["kernels.name=triton"], "type +kernels=triton"),
    (B, ["-m", "--multirun", "+attn=sdpa,flex"], "give -m once"),
    (B, ["results=/proc/self/clear_refs"], "one of the kernel's files"),
    (B, ["-m", "+attn=sdpa,flex", "results={tmp}/a.jsonl,/proc/x.jsonl"], "one of the kernel's files"),
    (B, ["-m", "+attn=sdpa,flex", "results={tmp}/a.jsonl,{dir}"], "is a directory"),
    (B, [*hf("rp_theta0.json")], "rope_parameters.rope_theta 0 is outside 1..1e30"),
    (B, [*hf("rp_theta_neg.json")], "rope_parameters.rope_theta -10000 is outside"),
    (B, [*hf("rs_nan.json")], "rope_scaling.factor is nan, not a finite number"),
    (B, [*hf("prf_tiny.json")], "rotates no pair of features"),
    (B, [*hf("dupkeys.json")], "the field 'hidden_size' is given twice"),
    (B, [*hf("quantized.json")], "has a quantization_config"),
    (B, [*hf("dtype_int8.json")], "dtype 'int8' is not a checkpoint dtype"),
    (B, ["model=hf_qwen3_tiny", "model.flavour=Qwen3-4B"], "renames conf/model/hf_qwen3_tiny.yaml's model"),
    ("predict", ["model=hf", "model.config={tmp}/rp_theta0.json", "hardware=h100"], "rope_parameters.rope_theta 0"),
    (B, ["results=$HOME/x.jsonl"], "holds '$', a variable the shell did not expand"),
    (B, ["+sync=filesystem", "sync.dir=$HOME/w"], "holds '$', a variable the shell did not expand"),
    (B, ["results=benchmarks/results/h100-table.jsonl"], "this row runs on the CPU"),
    (B, ["-m", "+attn=sdpa,flex", "row_timeout_s=1e30"], "row_timeout_s must be at most"),
    ("report", ["--results", "{rows}", "--out", "{tmp}/x.png"], "the report is Markdown"),
    ("predict", ["--published", "--out", "{tmp}/P.md", "--rows", "benchmarks/results/new.jsonl"],
     "is among the measured rows"),
    ("predict", ["--published", "--out", "benchmarks/results/x.md", "--rows", "{tmp}/P.jsonl"],
     "is among the measured rows"),
]


@pytest.mark.parametrize("case", CASES_13, ids=[_case_id(c) for c in CASES_13])
def test_round_thirteen_one_line_status_2(case, tmp_path, capsys, monkeypatch):
    """Round thirteen's failures (a hostile pass of 392 cases): Hydra's group syntax past the hydra.*
    refusal, a plugin renamed by <group>.name, -m given twice as -m and --multirun, kernel files and
    swept results checked only after a row ran, rope fields in rope_parameters that gave NaN rows,
    duplicate or storage fields, and a tiny model's rows named as the 4B's."""
    test_bad_input_one_line_status_2(case, tmp_path, capsys, monkeypatch)


@pytest.mark.parametrize("body,first", [
    ({"rows": ["model=qwen3_tiny +sweep=cpu_smoke"]}, "would start a sweep inside the sweep"),
    ({"rows": ["model=qwen3_tiny results=/tmp/x.jsonl"]}, "sets results, which belongs to the whole sweep"),
    ({"rows": ["model=qwen3_tiny repeats=2"]}, "sets repeats, which belongs to the whole sweep"),
    ({"rows": ["-m model=qwen3_tiny"]}, "holds the flag -m"),
    ({"rows": ["seed=0,1"]}, "lists several values, and a sweep file's row is one row"),
    ({"rows": ["tag=a#b"]}, "cannot parse 'tag=a#b'"),
    ({"rows": ["tag=${oc.env:HOME}"]}, "interpolations (${...}) are not taken in a row"),
    ({"name": ["a", "b"], "rows": ["steps=2"]}, "not a name"),
    ({"name": "other", "rows": ["steps=2"]}, "is named 'other' inside: write name: mine"),  # round fourteen
    ({"rows": ["steps=2 hydra.job.chdir=true"]}, "Hydra's own settings are stepbench's"),  # round fourteen
    ({"rows": ["steps=2 hydra/job_logging=none"]}, "Hydra's own settings are stepbench's"),
])
def test_a_sweep_file_row_is_one_row_of_overrides(body, first):
    """Round thirteen: a row holding +sweep= deadlocked on its parent's results lock; results=,
    repeats=, flags, several values and interpolations in a row were dropped, ran twice, failed as
    rows or were resolved from the environment."""
    from omegaconf import OmegaConf

    from core.resolve import UserError
    from core.sweep import sweep_file_rows

    with pytest.raises(UserError) as e:
        sweep_file_rows(OmegaConf.create(body), "mine")
    assert first in str(e.value) and "\n" not in str(e.value)


def test_sweep_file_options_on_the_command_line_are_refused():
    from core.bench import check_overrides
    from core.resolve import UserError

    with pytest.raises(UserError, match="changes the sweep file itself"):
        check_overrides(["+sweep=cpu_smoke", "sweep.name=x"])


def test_a_bom_before_the_first_row_is_taken(tmp_path):
    """Round thirteen: a rows file beginning with a byte-order mark (one row) was refused as ending in
    a line that is not a row."""
    from core.results import check_writable

    f = tmp_path / "bom.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"status": "ok", "model": "m"}\n')
    assert check_writable(f) == f


@pytest.mark.parametrize("value,ok", [("maybe", False), ("1", True), ("off", True), ("", True)])
def test_the_autoload_switch_takes_on_or_off_only(monkeypatch, value, ok):
    from core.paths import autoload_disabled

    monkeypatch.setenv("STEPBENCH_DISABLE_PLUGIN_AUTOLOAD", value)
    if ok:
        autoload_disabled()
    else:
        with pytest.raises(ValueError, match="neither on nor off"):
            autoload_disabled()


def test_sighup_stops_a_row_with_one_line_and_129():
    """Round thirteen: SIGHUP (the terminal closed) exited 129 without a word."""
    import signal
    import time

    import tempfile

    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    with tempfile.TemporaryDirectory() as d:
        p = subprocess.Popen([sys.executable, "-m", "core.bench", "model=qwen3_tiny", "device=cpu", "steps=100000",
                              "seq_len=128", f"results={d}/r.jsonl"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                             env=env)
        deadline = time.time() + 240
        seen = ""
        while time.time() < deadline and "step 1:" not in seen:
            seen += p.stderr.readline()
        p.send_signal(signal.SIGHUP)
        err = seen + p.stderr.read()
        assert p.wait(timeout=60) == 129
        assert "terminated (SIGHUP)" in err


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("args", [["core.predict", "--help"], ["core.cli", "--help"]],
                         ids=["predict --help", "stepbench --help"])
def test_a_reader_of_stdout_that_goes_away_is_quiet(args, unbuffered):
    """Round thirteen: ``python -m core.predict --help | head -1`` and ``stepbench --help | head -1``
    printed a BrokenPipeError traceback. Here stdout is a pipe whose reader is already gone: nothing
    on stderr, and the status a shell gives a process SIGPIPE ended (core.errors.quiet_broken_pipe)."""
    r, w = os.pipe()
    os.close(r)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": unbuffered}
    try:
        p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, stdout=w, stderr=subprocess.PIPE, text=True,
                           env=env, timeout=120)
    finally:
        os.close(w)
    assert p.stderr == "" and p.returncode == 141, (p.returncode, p.stderr[-2000:])


@pytest.mark.parametrize("stdin", [
    "[" * 100000,  # round thirteen: a RecursionError traceback
    '{"fixed": [], "combos": [[1, 2]]}',  # combos that are not override strings: status 0
    '{"fixed": [], "combos": ["seq_len=128"]}',  # a string where a list of overrides goes: status 0
    '{"fixed": [3], "combos": [["seq_len=128"]]}',
    "not JSON",
], ids=["nested", "int combos", "string combo", "int fixed", "not json"])
def test_sweepcheck_refuses_what_is_not_lists_of_overrides(stdin):
    """python -m core.sweepcheck: anything but {"fixed": [str], "combos": [[str]]} is the one line
    it prints for bad JSON, status 2 (nothing is composed)."""
    p = subprocess.run([sys.executable, "-m", "core.sweepcheck"], cwd=ROOT, capture_output=True, text=True,
                       input=stdin, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr[-2000:])
    assert "core.sweepcheck reads" in lines[0] and "lists of override strings" in lines[0], lines
    assert p.stdout == ""


def test_fa3_build_clone_offline_is_one_line_before_git(tmp_path, monkeypatch, capsys):
    """Round thirteen: --clone (its default folder) on a machine that is offline printed the
    "cloning ..." line and then git's failure. The host is looked up first: one line, git never runs."""
    import socket

    from core import fa3_build

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setenv("HOME", str(tmp_path))
    for v in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(fa3_build.shutil, "which", lambda name: "/usr/bin/" + name)
    capsys.readouterr()
    assert _call("fa3_build", ["--clone"], monkeypatch) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot reach github.com (Name or service not known)" in lines[0], lines
    assert "--source PATH" in lines[0] and not (tmp_path / ".cache" / "stepbench" / "flash-attention").exists()


def test_predict_asks_the_attention_plugin_about_the_profiles_gpu_only():
    """core.predict.refuse_a_backend_the_gpu_cannot_run: FA3 on an SM90 profile is predicted even
    where no FA3 is installed (this CPU machine); a profile that names no capability is not checked."""
    from core.errors import UserError
    from core.hardware import load
    from core.predict import refuse_a_backend_the_gpu_cannot_run

    for name in ("h100", "h200"):
        refuse_a_backend_the_gpu_cannot_run("fa3", load(name), 8)
    refuse_a_backend_the_gpu_cannot_run("fa3", {k: v for k, v in load("a6000").items() if k != "capability"}, 1)
    refuse_a_backend_the_gpu_cannot_run("fa2", load("a6000"), 1)
    with pytest.raises(UserError, match="predict for hardware=h100 or h200$"):
        refuse_a_backend_the_gpu_cannot_run("fa3", {**load("h100"), "capability": "8.9"}, 1)


def test_sync_auto_with_its_method_blocked_is_one_line(tmp_path):
    """Round thirteen: STEPBENCH_BLOCK_PLUGINS=host left sync=auto (RL full: host) to Hydra's
    traceback of PluginError. It is one line naming +sync=none, status 2, nothing appended."""
    from core.sweep import RUN_ENV

    env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
    env.update(PYTHONPATH=str(ROOT), STEPBENCH_BLOCK_PLUGINS="host")
    res = tmp_path / "rows.jsonl"
    p = subprocess.run([sys.executable, "-m", "core.bench", *(f"{k}={v}" for k, v in TINY.items()), f"results={res}"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr[-2000:])
    assert "sync=auto hands this row's weights off with host" in lines[0] and "+sync=none" in lines[0], lines
    assert not res.exists() and p.stdout.strip() == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_row_whose_stdout_cannot_be_written_says_where_the_row_is(tmp_path):
    """Round thirteen: ``python -m core.bench ... >/dev/full`` appended the row and then printed an
    OSError traceback. Now one line says stdout could not be written and where the row is; status 1."""
    from core.sweep import RUN_ENV

    env = {k: v for k, v in os.environ.items() if k != RUN_ENV}
    env["PYTHONPATH"] = str(ROOT)
    res = tmp_path / "rows.jsonl"
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "core.bench", *(f"{k}={v}" for k, v in TINY.items()),
                            f"results={res}"], cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                           timeout=300)
    said = [ln for ln in p.stderr.splitlines() if "stdout cannot be written" in ln]
    assert p.returncode == 1 and "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr[-3000:]
    assert len(said) == 1 and said[0].startswith("stepbench: ") and f"the row is in {res}" in said[0], said
    assert [json.loads(ln)["status"] for ln in res.read_text().splitlines()] == ["ok"]


def test_a_long_step_says_it_is_still_running(capsys):
    """Round thirteen: a warm-up of 1024 micro-batches, or a CPU step of a million tokens, was silent
    for minutes; a step now says every HEARTBEAT_S seconds that it still runs."""
    import time

    from core.measure import heartbeat

    with heartbeat("warm-up", every=0.05):
        time.sleep(0.3)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "warm-up: still running" in ln]
    assert len(lines) >= 3
    with heartbeat("step 1", every=5.0):
        time.sleep(0.05)
    assert "still running" not in capsys.readouterr().err  # a short step prints nothing more


def test_git_dirty_without_a_commit_is_refused(monkeypatch):
    """Round thirteen: STEPBENCH_GIT_DIRTY=1 alone was ignored without a word."""
    from core.bench import check_launch
    from core.resolve import UserError

    monkeypatch.delenv("STEPBENCH_GIT_COMMIT", raising=False)
    monkeypatch.setenv("STEPBENCH_GIT_DIRTY", "1")
    with pytest.raises(UserError, match="read only with STEPBENCH_GIT_COMMIT"):
        check_launch(os.environ)


def test_a_long_preparation_says_how_far_it_is(capsys):
    """Round thirteen: composing a 3000-row sweep file, or checking 8191 values of a -m sweep, was
    silent for minutes; a line now says how far it is every ten seconds."""
    from core.sweep import Ticker

    t = Ticker(3, "values checked", every=0.0)
    t.tick(1)
    Ticker(3, "values checked", every=60.0).tick(2)  # within the interval: nothing
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "values checked" in ln]
    assert len(lines) == 1 and "values checked: 1 of 3" in lines[0]


def test_a_cpu_row_into_a_hard_link_of_the_gpu_record_is_refused(tmp_path):
    """Round thirteen: a hard link to benchmarks/results/h100-table.jsonl passed as results= took a
    CPU row into the committed GPU rows."""
    from core.bench import gpu_record
    from core.resolve import UserError

    import shutil
    import tempfile

    folder = tmp_path
    try:
        os.link(RESULT_INPUT, folder / "hl.jsonl")
    except OSError:  # /tmp on another filesystem than the checkout: a folder beside it instead
        folder = Path(tempfile.mkdtemp(dir=ROOT, prefix=".test-link-"))
        os.link(RESULT_INPUT, folder / "hl.jsonl")
    try:
        with pytest.raises(UserError, match="this row runs on the CPU"):
            gpu_record(str(folder / "hl.jsonl"), "cpu")
        gpu_record(str(folder / "mine.jsonl"), "cpu")  # another file is taken
        gpu_record(str(folder / "hl.jsonl"), "cuda")  # a GPU row may go there
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)


def test_a_ctrl_c_that_lands_in_the_gc_callback_still_stops_the_row():
    """Round thirteen: a SIGTERM whose KeyboardInterrupt was raised inside the garbage collector's
    timing callback was ignored by Python (gc callbacks cannot raise), and the row ran on."""
    import time

    from core.measure import GCPauses

    g = GCPauses()
    g.close()

    def interrupted():
        raise KeyboardInterrupt

    g._now = interrupted
    with pytest.raises(KeyboardInterrupt):
        g._cb("start", {})  # swallowed here, as Python would
        time.sleep(5)  # delivered again from another thread


def test_a_sweep_file_with_a_defaults_list_is_refused(tmp_path, monkeypatch):
    """Round thirteen: a sweep file's Hydra defaults list was merged away without a word."""
    import core.options
    from core.resolve import UserError
    from core.sweep import no_defaults_list

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "mine.yaml").write_text("defaults:\n  - other\nname: mine\nrows:\n  - steps=2\n")
    (tmp_path / "sweep" / "plain.yaml").write_text("name: plain\nrows:\n  - steps=2\n")
    monkeypatch.setattr(core.options, "conf_dir", lambda: tmp_path)
    with pytest.raises(UserError, match="has a defaults list, which a sweep file does not take"):
        no_defaults_list("mine")
    no_defaults_list("plain")
    no_defaults_list("cpu_smoke")  # not in this folder: nothing to say


@pytest.mark.parametrize("tool", ["core.predict", "core.report"])
def test_the_tools_refuse_an_autoload_switch_that_is_neither_on_nor_off(tool):
    """Round thirteen: predict and report check the switch first (core.errors.run_main), one line, 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STEPBENCH_DISABLE_PLUGIN_AUTOLOAD": "maybe"}
    p = subprocess.run([sys.executable, "-m", tool, "--help"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "nanobind" not in ln and not ln.startswith(" - ")]
    assert p.returncode == 2 and len(lines) == 1 and "neither on nor off" in lines[0], p.stderr


#: round fourteen (the left-overs of round thirteen, then the fresh pass's failures)
LONG = "/".join(["d" * 200] * 25)  # 5000 bytes: each name fits a filesystem, the path no system call
CASES_14 = [
    (B, ["adapter=lora", "adapter.alpha=1e-30"], "adapter.alpha=1e-30 is below 0.01"),
    (B, ["adapter=lora", "adapter.alpha=0.001"], "adapter.alpha=0.001 is below 0.01"),
    (B, [f"results={{tmp}}/{LONG}/r.jsonl"], "bytes long, above the 4095 a path may have"),
    ("report", ["--results", f"{{tmp}}/{LONG}/r.jsonl"], "bytes long, above the 4095"),
    ("report", ["--results", "{rows}", "--out", f"{{tmp}}/{LONG}/B.md"], "bytes long, above the 4095"),
    ("predict", ["--published", "--out", f"{{tmp}}/{LONG}/P.md", "--rows", "{tmp}/P.jsonl"],
     "bytes long, above the 4095"),
    ("fa3_build", ["--source", f"{{tmp}}/{LONG}"], "bytes long, above the 4095"),
    ("fa3_build", ["--clone", f"{{tmp}}/{LONG}"], "bytes long, above the 4095"),
    ("report", ["--results", "{rows}", "--save-baseline", "--baseline", f"{{tmp}}/{LONG}/b.jsonl"],
     "bytes long, above the 4095"),
    (B, ["-m", "seq_len=range(128,1000000000,128)"], "this sweep has 7,812,499 rows, more than the 10,000"),
    (B, ["-m", "seed=0", "redo=true,false"], "redo applies to the whole sweep, so it takes one value"),
    (B, ["-m", "seed=0,1", "redo=true", "repeats=1,2"], "repeats applies to the whole sweep"),
    (B, ["-m", "seq_len=range(0,3200,128)"], "seq_len must be a positive multiple of 128 (got 0)"),  # one line
    (B, ["+ac=selective", "ac.save=[attention,attention]"], "ac.save lists attention twice"),
    (B, ["adapter=lora", "adapter.targets=[q_proj,q_proj]"], "adapter.targets lists q_proj twice"),
    (B, ["tag=" + "x" * 300], "tag is 300 characters, more than the 200"),
    (B, ["model=hf_qwen3_tiny", "+model.config.num_hidden_layer=4"], "did you mean model.config.num_hidden_layers?"),
    (B, [*hf("init_nan.json")], "initializer_range must be a number above 0 (got nan)"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "adapter=lora", "adapter.targets=[q_proj,q_proj]"],
     "adapter.targets lists q_proj twice"),
    ("predict", ["model=qwen3_4b", "hardware=h100", "adapter=lora", "adapter.alpha=8"],
     "adapter.alpha= changes nothing in a prediction"),
    # the re-check's questionable cases
    ("predict", ["model=qwen3_4b", "hardware=h100", "hardware.link_gbps=1"], "one GPU sends nothing over it"),
    ("predict", ["--published", "--published", "--out", "{tmp}/P.md"], "--published is given twice"),
    ("predict", ["--published", "--out", "{tmp}/P.jsonl", "--rows", "{tmp}/p.jsonl"], "--out takes a .md file"),
    (B, ["a" * 5000 + "=1"], "unknown option 'aaaa"),
    # round fifteen
    (B, ["-m", "+peer=hf_eager,hf_compiled", "peer.precision=bf16"], "run one -m per plugin (+peer=hf_eager"),
]


@pytest.mark.parametrize("case", CASES_14, ids=[_case_id(c) for c in CASES_14])
def test_round_fourteen_one_line_status_2(case, tmp_path, capsys, monkeypatch):
    """Round fourteen: a LoRA alpha that scales the update to nothing was taken; a path longer than
    PATH_MAX (each name short enough) was a traceback (ENAMETOOLONG) in every tool."""
    test_bad_input_one_line_status_2(case, tmp_path, capsys, monkeypatch)


def test_options_after_a_sweep_file_that_every_row_refuses_stop_it_at_once(tmp_path):
    """+peer=prime_rl without peer.path after +sweep=NAME was refused row by row (three failed
    rows); it is one line and status 2 before any row, with nothing appended."""
    res = tmp_path / "r.jsonl"
    p = subprocess.run([sys.executable, "-m", "core.bench", "+sweep=cpu_smoke", "+peer=prime_rl", f"results={res}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith("stepbench: +peer=prime_rl (after +sweep=): row 1 (") and "peer.path=" in lines[0]
    assert not res.exists()


def _tool(args: list[str], env: dict | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=300)


def test_torch_logs_torch_refuses_is_one_line_before_the_row(tmp_path):
    """TORCH_LOGS that torch cannot parse failed torch's import inside Hydra's job: a traceback."""
    p = _tool(["core.bench", "model=qwen3_tiny", "device=cpu", f"results={tmp_path}/r.jsonl"], {"TORCH_LOGS": "bogus_x"})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "TORCH_LOGS='bogus_x' is not a setting torch takes" in lines[0], \
        p.stderr[-2000:]
    assert not (tmp_path / "r.jsonl").exists()


def test_the_report_draws_its_plots_whatever_mplbackend_says(tmp_path):
    """MPLBACKEND=bogus failed matplotlib's import in the report (a traceback, no report)."""
    p = _tool(["core.report", "--results", str(RESULT_INPUT), "--out", str(tmp_path / "B.md")], {"MPLBACKEND": "bogus"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "B.md").is_file() and list(tmp_path.glob("B-plot-*.png"))


@pytest.mark.parametrize("args", [["core.report", "--results", str(RESULT_INPUT), "--out", "{tmp}/B.md"],
                                  ["core.bench", "--list"], ["core.bench", "--cfg", "job"]],
                         ids=["report", "bench --list", "bench --cfg"])
def test_stdout_on_a_full_disk_is_one_line_and_status_1(args, tmp_path):
    """stdout that cannot be written (> /dev/full) was a traceback (report, predict) or 'stepbench: 28'
    (bench --list); the report's file is written before it prints."""
    with open("/dev/full", "w") as full:
        p = _tool([a.replace("{tmp}", str(tmp_path)) for a in args], stdout=full)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1, p.stderr[-2000:]
    assert "standard output cannot be written (No space left on device)" in lines[0]
    assert args[0] != "core.report" or (tmp_path / "B.md").is_file()


BOMB = "name: bomb\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("bcdefg", "cdefgh")) + "rows: [*h]\n"


@pytest.mark.parametrize("text,first", [
    (BOMB, "uses YAML anchors or aliases"),  # nine to the eighth rows: Hydra never came back
    ("name: x\nrows: [a\n", "is not a sweep file's YAML at line 3"),
    ("name: !!python/object:os.system x\nrows: [steps=2]\n", "could not determine a constructor"),
    (b"\xff\xfe\x00bin", "is not UTF-8 text"),
], ids=["alias bomb", "bad yaml", "python tag", "binary"])
def test_a_sweep_file_hydra_cannot_take_is_one_line_naming_it(text, first, tmp_path, monkeypatch):
    """Round fourteen: an alias bomb hung the sweep; bad YAML, a !!python tag or a binary file was
    "bad override: ..." naming no file. Checked on the file before Hydra reads it."""
    import core.options
    from core.resolve import UserError
    from core.sweep import no_defaults_list

    (tmp_path / "sweep").mkdir()
    f = tmp_path / "sweep" / "mine.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setattr(core.options, "conf_dir", lambda: tmp_path)
    with pytest.raises(UserError) as e:
        no_defaults_list("mine")
    assert first in str(e.value) and "mine.yaml" in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_quoted_tilde_in_results_is_the_home_folder(tmp_path):
    """Round fourteen: results='~/r.jsonl' (quoted past the shell, as the hint for the unquoted form
    says) passed the check of ~/r.jsonl and then made a folder named '~' in the current folder."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    p = subprocess.run([sys.executable, "-m", "core.bench", "results='~/r.jsonl'", "model=qwen3_tiny", "device=cpu",
                        "steps=2", "seq_len=128"], cwd=here, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(read_rows_of(home / "r.jsonl")) == 1 and not (here / "~").exists()


def read_rows_of(path):
    from core.results import load_rows

    return load_rows(path)


@pytest.mark.parametrize("stdin,args,first", [
    ('{"fixed": [], "combos": [["=="]]}', [], "the row ==: Error parsing override"),
    ('{"fixed": ["seq_len=abc"], "combos": []}', [], "seq_len must be an integer"),
    ('{"fixed": [], "combos": []}', ["bogus"], "core.sweepcheck takes no arguments"),
], ids=["unparsable row", "fixed alone", "argument"])
def test_sweepcheck_refuses_what_its_rows_would(stdin, args, first):
    """Round fourteen: a row that did not compose, the fixed overrides with no combos and a stray
    argument passed with status 0 (in a sweep such a row fails as a row; asked directly, it is the answer)."""
    p = subprocess.run([sys.executable, "-m", "core.sweepcheck", *args], cwd=ROOT, capture_output=True, text=True,
                       input=stdin, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and first in lines[0], p.stderr[-2000:]


def test_an_empty_git_dirty_is_unset():
    from core.bench import check_launch

    check_launch({"STEPBENCH_GIT_DIRTY": ""})  # as an empty STEPBENCH_RUN_ID: no commit needed


def test_checking_a_row_leaves_its_config_as_composed():
    """Review of round fourteen: blame_extra resolved the sweep's composed rows in place (compile=auto
    settled), so each +peer= row was later refused for a compile= it never typed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from core.options import conf_dir
    from core.sweepcheck import refusal

    row = ["model=qwen3_tiny", "+peer=hf_eager", "seq_len=128", "device=cpu"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("bench", overrides=row)
            assert refusal(cfg, row) is None and cfg.compile == "auto"
            assert refusal(cfg, row) is None  # and again: the sweep resolves it once more when it runs
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("model_type,fields", [
    ("glm4", {"partial_rotary_factor": 0.5}), ("phi3", {"partial_rotary_factor": 0.75}),
    ("gemma3_text", {"rope_local_base_freq": 10000.0, "sliding_window_pattern": 6}), ("qwen3", {"rope_theta": 1e6}),
])
def test_fields_transformers_takes_from_kwargs_are_not_called_unknown(model_type, fields):
    """Review of round fourteen: fields a config class turns into others (partial_rotary_factor into
    rope_parameters) were refused as ignored."""
    from plugins.models.hf import unknown_fields

    shapes = {k: HF_OK[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                      "intermediate_size", "vocab_size")}
    unknown_fields({"model_type": model_type, **shapes, **fields})


def test_the_cpu_profile_is_taken_on_a_cpu_row():
    """Round fifteen: hardware=cpu (the profile hardware=auto picks there) was refused as a GPU's."""
    from core.bench import check_overrides
    from core.resolve import resolve

    r = resolve(check_overrides(["model=qwen3_tiny", "device=cpu", "hardware=cpu", "seq_len=128"]))
    assert r.hw["label"] == "CPU"


def test_a_tool_started_with_stdout_closed_runs_without_a_traceback(tmp_path):
    """Round fifteen: `>&-` (no stdout at all) gave "'NoneType' object has no attribute 'flush'"."""
    p = subprocess.run([sys.executable, "-m", "core.report", "--results", str(RESULT_INPUT), "--out",
                        str(tmp_path / "B.md")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, preexec_fn=lambda: os.close(1))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert (tmp_path / "B.md").is_file()


def test_sigterm_to_predict_is_one_line_and_143(tmp_path):
    """Round fifteen: SIGTERM ended predict and report silently (143, no line)."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "core.predict", "--published", "--out", str(tmp_path / "P.md"),
                          "--rows", str(tmp_path / "P.jsonl")], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(2.0)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if p.returncode == 0:  # it finished first on a fast machine: nothing to say
        return
    assert p.returncode == 143 and len(lines) == 1 and "terminated (SIGTERM)" in lines[0], err[-2000:]
    assert not list(tmp_path.glob("*"))  # nothing half-written
