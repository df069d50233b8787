"""Every stepbench hook spec, in one file.

Plugins fill registries through ``register(...)`` callbacks; Hydra chooses among the registered
names, pluggy only collects them. A plugin module implements any subset of these hooks with
``@core.hookimpl``-decorated functions of the same names. What each registered object must provide
is its kind's contract in :mod:`core.contracts`; :mod:`core.testing` checks it.

``register(name, factory, why_not=None, doc="")``:

* ``name``: the name a user types (``+attn=<name>``); a name registered twice is an error that
  names both plugins.
* ``factory``: ``factory(options, ctx)`` returns the plugin object: ``options`` is a dict of the
  plugin's Hydra options (``conf/<group>/*.yaml``), ``ctx`` a :class:`core.contracts.RunContext`.
  It must be cheap and allocate nothing on the GPU (the core also makes plugins to ask their
  declarations, before anything is built); heavy imports (kernels, peft) belong inside it or in
  the object's methods, never at plugin import. Bad options: ``ValueError`` with one line.
* ``why_not``: ``None`` or ``why_not(ctx) -> str | None``: cheaply and without allocating on the
  GPU, why the plugin cannot run here (the bench refuses the row with that reason).
* ``doc``: one line shown by ``python -m core.bench --list``.
"""

from core import hookspec


@hookspec
def stepbench_register_attention(register):
    """Register attention backends: factories of :class:`core.contracts.AttentionBackend`.

    Called once per process when the registry is built. The trainer calls the backend's
    ``prepare()`` on the device, then binds it to every attention layer; each layer calls it on
    packed ``[total_tokens, heads, head_dim]`` tensors with the micro-batch's ``cu_seqlens``.
    """


@hookspec
def stepbench_register_checkpointing(register):
    """Register activation-memory strategies: factories of :class:`core.contracts.ActivationMemory`.

    The trainer calls ``apply(model)`` after the adapter and the attention binding (before compile
    and FSDP2) and enters ``step_context()`` around each micro-batch; the memory predictor asks
    ``saved_bytes`` and ``host_bytes``, the FLOP count ``recompute``.
    """


@hookspec
def stepbench_register_adapters(register):
    """Register adapters: factories of :class:`core.contracts.Adapter`.

    The trainer calls ``apply(model)`` first, on the meta device, and ``counts(model)`` after
    materializing (the MFU formula); the memory predictor and the weight sync ask
    ``trainable_params``, ``handoff_params`` and ``handoff``.
    """


@hookspec
def stepbench_register_models(register):
    """Register model families: ``register(name, family)`` with a :class:`core.contracts.ModelFamily`
    (not a factory): its ``flavours`` or ``from_config`` give the shapes, ``build(args)`` a
    :class:`core.contracts.TrainableModel` on the meta device. ``model=<yaml>`` names it as
    ``family: <name>``.
    """


@hookspec
def stepbench_register_weight_sync(register):
    """Register weight-sync methods: factories of :class:`core.contracts.WeightSync`.

    The core calls ``check(sync_ctx)`` before anything is built, ``setup(model, sync_ctx)`` after,
    ``before_update()`` before and ``after_step(step)`` after every optimizer step (inside the timed
    step), and ``finish()`` once at the end, also when the row failed.
    """


@hookspec
def stepbench_register_kernels(register):
    """Register kernels providers: factories of :class:`core.contracts.Kernels`.

    The trainer calls the provider's ``prepare()`` on the device, then binds it to every module of
    the model that computes a block operation it lists in ``ops`` (RMSNorm, the residual add with
    RMSNorm, SwiGLU, RoPE of the native families); the other operations run as PyTorch ops.
    """


@hookspec
def stepbench_register_peers(register):
    """Register peers: factories of :class:`core.contracts.Peer` (``+peer=<name>``).

    The core asks ``why_not(spec)`` before anything runs, then starts ``command(spec, workdir)`` as
    a child process (its output shown as it comes, killed past ``peer.timeout_s``) and reads
    ``result(workdir, log)`` into a row in stepbench's format (the peer's own TPS and peak, its
    version and per-step work, stepbench's MFU formula on its TPS).
    """


@hookspec
def stepbench_row_finished(row):
    """Observe every finished row (a dict, successful or failed) after it is written to the results."""
