"""Every stepbench hook spec, in one file.

Plugins fill registries through ``register(...)`` callbacks; Hydra chooses among the registered
names, pluggy only collects them. A plugin module implements any subset of these hooks with
``@core.hookimpl``-decorated functions of the same names.

``register(name, factory, why_not=None, doc="")``:

* ``name``: the name a user types (``+attn=<name>``).
* ``factory``: called as ``factory(cfg)`` with the plugin's Hydra config node; heavy imports
  (kernels, flash_attn, peft) belong inside it, never at plugin import.
* ``why_not``: ``None`` or a callable ``why_not(ctx) -> str | None`` that says, cheaply and without
  allocating on the GPU, why the plugin cannot run here (``ctx`` is a :class:`core.plugins.RunContext`).
* ``doc``: one line shown by ``python -m core.bench --list``.
* ``traits``: optional dict of facts the bench may ask without importing the plugin, e.g. an
  attention backend's ``repeats_kv() -> bool`` (whether its saved K/V have the query head count).
"""

from core import hookspec


@hookspec
def stepbench_register_attention(register):
    """Register attention backends.

    A backend factory returns an object with ``__call__(q, k, v, meta) -> out``, where q is
    ``[total_tokens, n_heads, head_dim]``, k and v are ``[total_tokens, n_kv_heads, head_dim]``
    (bf16, packed documents), ``meta`` is a :class:`core.data.AttnMeta` (cu_seqlens on device and
    host, max_seqlen), and ``out`` is ``[total_tokens, n_heads, head_dim]``: causal attention
    within each document, softmax scale ``head_dim ** -0.5``. It also has ``name`` and
    ``provider`` (a string naming the kernel package and version that ran).
    """


@hookspec
def stepbench_register_checkpointing(register):
    """Register activation-memory strategies (recompute, offload, ...).

    A strategy factory returns an object with ``apply(model)`` that wraps the model's transformer
    blocks (it sets ``model.block_runner``), ``step_context()`` returning a context manager
    entered around each micro-batch's forward and backward, and ``describe() -> dict`` with what
    it keeps, recomputes or offloads (host memory used, for offload).
    """


@hookspec
def stepbench_register_adapters(register):
    """Register adapters (full fine-tuning, LoRA, ...).

    An adapter factory returns an object with ``apply(model) -> model`` (called on the meta
    device, before attention binding and checkpointing; adapter weights are named ``*lora_A*`` /
    ``*lora_B*``, which the trainer initializes by name, A uniform and B zero, identically under
    any sharding), ``param_dtype`` (dtype of frozen weights) and ``counts(model) -> dict`` with
    ``trainable``, ``adapter`` (LoRA A/B parameters) and ``fully_trainable`` (trainable, not
    adapter) parameter counts, used by the MFU formula. ``label`` is the Type column text ("Full", "LoRA(r=16)").
    """


@hookspec
def stepbench_register_models(register):
    """Register model families.

    The factory is a :class:`core.models.ModelFamily`: ``flavours`` (dict of name -> args
    dataclass) and ``build(args) -> nn.Module``. Models follow :class:`core.models.common.CausalLM`.
    """


@hookspec
def stepbench_row_finished(row):
    """Observe every finished row (a dict, successful or failed) after it is written."""


@hookspec
def stepbench_register_weight_sync(register):
    """Register weight-sync methods: the RL step's hand-off of new weights to inference.

    A factory returns an object with ``setup(model, ctx)`` (``ctx`` is a
    :class:`core.sync.SyncContext`: rank, world size, device, whether the adapter is LoRA, the
    step count), ``after_step(step)`` called by the trainer after every optimizer step, inside the
    timed step, ``finish()`` called once after the last step (waits for overlapped work),
    ``check(ctx) -> str | None`` (a reason the row cannot start, e.g. a full disk; cheap, before
    anything is built) and ``describe() -> dict`` with the method, the bytes moved per step and the
    time each step spent in the sync (total and exposed).
    """
