"""The plugin contracts: what each plugin kind provides, and what the core calls it for.

A plugin module registers factories through the hooks of :mod:`core.hookspecs`. A factory is
called as ``factory(options, ctx)``: ``options`` is a plain ``dict`` of the plugin's Hydra options
(``{"name": "lora", "rank": 16, ...}``), ``ctx`` a :class:`RunContext`. It must be cheap: it checks
its options (``ValueError`` with one line that says what to type instead; the bench exits with
status 2) and allocates nothing on the GPU, because the core also calls it to *ask* a plugin about
a row before anything is built (the refusal of rows that cannot fit, ``python -m core.predict``,
the report). Work that needs the device (loading kernels, a smoke test) belongs in a method the
trainer calls while it builds the row (:meth:`AttentionBackend.prepare`, ``apply``, ``setup``).

Every member below is what the core calls; the core never asks a plugin's name what it does. The
declarations (memory, recomputed work, bytes handed off, head dims) feed the memory predictor and
the refusal (:mod:`core.memory`), the executed-FLOP count and the roofline (:mod:`core.flops`) and
``python -m core.predict``, so a third-party plugin is predicted from its own facts.
:mod:`core.testing` checks a plugin against this contract (``check_attention``, ``check_ac``, ...).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class RunContext:
    """Where a row runs: what a factory and a ``why_not`` check may ask (cheap, no allocation)."""

    device: str = "cpu"  #: "cuda" or "cpu"
    gpu_name: str | None = None
    capability: tuple[int, int] | None = None  #: CUDA compute capability, e.g. (9, 0)
    world_size: int = 1
    compute_dtype: str = "bfloat16"  #: the dtype every layer computes in
    hardware: dict = field(default_factory=dict, compare=False)  #: the hardware profile (conf/hardware)
    #: False: a hardware profile predicted for (core.predict), not this machine: a ``why_not`` answers
    #: for the GPU only (its compute capability), not for what is installed here
    installed: bool = True

    @staticmethod
    def detect(world_size: int = 1, hardware: dict | None = None) -> "RunContext":
        """The context of this process: its first GPU, or the CPU."""
        import torch

        if torch.cuda.is_available():
            return RunContext("cuda", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
                              world_size, hardware=dict(hardware or {}))
        return RunContext("cpu", None, None, world_size, hardware=dict(hardware or {}))


@dataclass(frozen=True)
class RecomputeFacts:
    """What an activation strategy runs again in backward, as shares of the whole model's forward:
    ``blocks`` of the blocks' matmuls and ``attention`` of the attention forward (True = 1.0, all of
    it; False = none). Full recompute is (1, 1); selective recompute, which keeps attention's
    outputs, is (1, 0); keeping everything is (0, 0); checkpointing every other block is (0.5, 0.5)."""

    blocks: float = 0.0
    attention: float = 0.0


@dataclass(frozen=True)
class Shape:
    """What an activation strategy may need of a row to declare its memory: the model's
    hyper-parameters (:class:`core.models.common.ModelArgs`), the tokens per micro-batch, the bytes
    of one block's input (bf16 ``[tokens, hidden]``) and of one block's live activations during its
    forward and backward (:func:`core.memory.live_block_bytes`), and whether the attention kernel
    saves K/V at the query head count."""

    args: Any
    seq_len: int
    block_input_bytes: float
    live_block_bytes: float
    kv_repeated: bool = False


# ------------------------------------------------------------------------------------ attention
@runtime_checkable
class AttentionBackend(Protocol):
    """``+attn=<name>``: causal attention over packed documents.

    Tensors are packed varlen: q is ``[total_tokens, n_heads, head_dim]``, k and v are
    ``[total_tokens, n_kv_heads, head_dim]`` (bf16, or fp32 on a CPU), ``meta`` is a
    :class:`core.data.AttnMeta` (``cu_seqlens`` on the device and on the host, ``max_seqlen``).
    """

    name: str  #: the name a user types (``+attn=<name>``)

    @property
    def label(self) -> str:
        """The Attn column of a row ("FA3")."""
        return self.name
    #: the kernel family whose measured ceilings set the row's roofline ("fa3"; conf/hardware); ""
    #: for the hardware profile's nominal attention ceiling
    kernel: str = ""
    repeats_kv: bool = False  #: saves K/V at the query head count for backward (the memory model adds them)

    provider: str = ""  #: the kernel package and version that ran, stored in the row ("flash_attn_3 3.0.0")

    def prepare(self) -> None:
        """Called once on the row's device before the model is built: load kernels, run a smoke
        test. Raise ``ValueError`` with one line (what is missing, what to type instead)."""

    def supports(self, args) -> str | None:
        """``None`` when this backend runs the model's attention (``args``: its ModelArgs), else why
        not, with the backend to use instead. Called before anything is built."""

    #: what this backend honours beyond plain causal attention at ``head_dim ** -0.5``, a subset of
    #: :data:`ATTN_FEATURES`; a model whose attention needs more (``ModelArgs.attn_features``) is
    #: refused before anything is built, naming the backends that declare it
    features: frozenset = frozenset()

    def __call__(self, q, k, v, meta, **features):
        """``[total_tokens, n_heads, head_dim]``: causal attention within each document, softmax
        scale ``head_dim ** -0.5``, GQA by head groups. ``features`` holds only those a model asks
        for and the backend declares (:data:`ATTN_FEATURES`); a plain causal model passes none."""


#: what a model's attention may ask of a backend beyond plain causal attention, as the keyword
#: arguments the backend is called with
ATTN_FEATURES = {
    "scale": "softmax scale other than head_dim ** -0.5 (a float: Gemma's query_pre_attn_scalar)",
    "window": "sliding window (an int w: a query sees itself and the w-1 tokens before it in its document)",
    "softcap": "logit soft-capping (a float c: scores become c * tanh(scores / c); Gemma 2)",
    "sinks": "learned per-head sink logits (a [n_heads] tensor added to each softmax's denominator; gpt-oss)",
}


# ------------------------------------------------------------------------------ activation memory
@runtime_checkable
class ActivationMemory(Protocol):
    """``+ac=<name>``: what a block keeps for backward, recomputes, or moves to the host."""

    name: str
    label: str  #: the AC column of a row ("Recompute", "Offload (attention)")
    recompute: RecomputeFacts  #: what backward runs again (the executed FLOPs and the roofline)
    #: a strategy whose checkpoint sits inside each block's forward (compiled with it): the memory
    #: model adds what torch.compile keeps there with LoRA (:data:`core.memory.COMPILED_LORA_EXTRA`)
    checkpoint_in_block: bool = False
    #: what to suggest when a row is predicted not to fit ("+ac=offload"), or None
    leaner: str | None = None

    def apply(self, model) -> None:
        """Wrap the model's blocks (``model.layers``): set ``model.block_runner(block, x, rope, meta)``
        or wrap each block's ``forward``. Called on the meta device, after the adapter and the
        attention binding, before torch.compile and FSDP2. A model with ``own_checkpointing``
        (transformers' plain loop) checkpoints itself: set a ``block_runner`` other than
        :func:`core.models.common.run_block` to ask it to."""

    def step_context(self) -> AbstractContextManager:
        """Entered around each micro-batch's forward and backward."""

    def describe(self) -> dict:
        """What it keeps, recomputes or offloads, stored in the row (``ac_info``); offload reports
        the pinned bytes it used (``host_offload_bytes``)."""

    def saved_bytes(self, shape: Shape) -> float:
        """GPU bytes kept from each block's forward to its backward, all blocks together, at the
        peak (every block's input for recompute; every activation without AC)."""

    def host_bytes(self, shape: Shape) -> float:
        """Pinned host bytes it will use (0 without offload); a row that would pin more than the
        host has is refused before it starts."""

    # Optional: ``why_not(args) -> str | None``, one line saying why its options do nothing (or
    # cannot work) for this model (e.g. offload keeping every block on the GPU); the row is
    # refused with it before anything is allocated.


# ---------------------------------------------------------------------------------------- adapter
@runtime_checkable
class Adapter(Protocol):
    """``adapter=<name>``: which weights train, and how.

    Optional: ``peer_fields(args) -> dict``, what a peer trainer (``+peer=...``) needs to build the
    same adapter: :class:`PeerSpec`'s ``lora_rank``, ``lora_alpha``, ``lora_targets`` and
    ``lora_expert_targets``. An adapter without it is run by a peer as its name alone (the peer's
    ``why_not`` decides whether it can)."""

    name: str
    label: str  #: the Type column's adapter text ("Full", "LoRA(r=16)")
    param_dtype: Any  #: torch dtype of the frozen weights (trainable ones are fp32 masters)
    #: the base model's weights are frozen (an adapter trains beside them): prime-rl's adapter MFU
    #: formula, no weight gradients of the base in the executed FLOPs, no gathered root under FSDP2
    frozen_base: bool
    #: keep the trainable weights out of FSDP2, whole on every rank: "auto" (at world size 1 where
    #: the model casts them, ``casts_adapters``), True or False (FSDP2 shards them with the base)
    replicate: Any = False
    #: whether the trainable weights may be replicated at all (the model's layers compute them in
    #: bf16 where they are used); False: FSDP2 must hold them
    replicable: bool = False

    def apply(self, model):
        """Transform the model on the meta device (before attention binding and checkpointing) and
        return it; set ``requires_grad`` on what trains. Adapter weights are named ``*lora_A*`` /
        ``*lora_B*`` where the trainer's seeded init should treat them as LoRA factors."""

    def counts(self, model) -> dict:
        """Parameter counts of the built model: ``trainable``, ``adapter`` (weights the adapter
        added) and ``fully_trainable`` (trainable weights of the base model): the MFU formula."""

    def supports(self, args) -> str | None:
        """``None`` when this adapter can adapt the model (``args``: its ModelArgs), else why not
        and what to type instead (one line). Called before anything is built."""
        return None

    def trainable_params(self, args) -> int:
        """Trainable parameters of a model of ``args``, predicted before it is built (memory)."""

    def handoff(self, model) -> list:
        """``[(name, parameter)]`` that inference needs after each step (weight sync)."""

    def handoff_params(self, args) -> int:
        """Parameters handed off per step for a model of ``args``, predicted (weight sync bytes)."""

    def init_param(self, name: str, shape, generator, device):
        """The initial value (a float tensor of ``shape`` on ``device``) of a parameter this adapter
        added, drawn from ``generator`` (seeded by the run's seed and the parameter's name, so every
        rank draws the same whole tensor), or None for the trainer's default init (a base weight)."""


# ------------------------------------------------------------------------------------ weight sync
@dataclass(kw_only=True)
class SyncContext:
    """What a weight-sync method knows about the row (made with keywords only)."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    adapter_only: bool = False  #: only the adapter's weights are handed off (a frozen base)
    predicted_bytes: int = 0  #: bf16 bytes handed off per step, predicted from the config
    row_id: str = ""
    task: str = "rl"  #: the row's task ("rl" or "sft")
    #: ``handoff(model) -> [(name, parameter)]``: what inference needs (the adapter's declaration)
    handoff: Callable | None = None

    def tensors(self, model) -> list:
        """The ``(name, parameter)`` pairs to hand off (every parameter when no adapter said)."""
        return self.handoff(model) if self.handoff else list(model.named_parameters())


@runtime_checkable
class WeightSync(Protocol):
    """``+sync=<name>``: the RL step's hand-off of new weights to inference, inside the timed step."""

    name: str
    #: whether it hands weights off every step (False: ``none``); the predictor adds a hand-off
    #: term only for methods that do
    hands_off: bool = True

    @property
    def label(self) -> str:
        """The Sync column ("filesystem disk", "host"); rows differ by it."""
        return self.name

    def check(self, ctx: SyncContext) -> str | None:
        """Why the row cannot start (a full disk, an unwritable folder), or None. Cheap; called
        before anything is built."""

    def setup(self, model, ctx: SyncContext) -> None:
        """Called once after the model is built (buffers, threads, receivers)."""

    def before_update(self) -> None:
        """Called just before each optimizer step: an overlapped hand-off of the previous step's
        weights must finish reading them."""

    def after_step(self, step: int) -> None:
        """Called after every optimizer step, inside the timed step: hand the weights over."""

    def finish(self) -> None:
        """Called once after the last step, also when the row failed: wait for overlapped work,
        stop receivers, remove what the row wrote."""

    def describe(self) -> dict:
        """Stored in the row (``sync_info``): ``method``, ``bytes_per_step``, and per step
        ``sync_s`` (hand-off seconds) and ``sync_exposed_s`` (what the step waited for)."""


# ----------------------------------------------------------------------------------- model family
# ------------------------------------------------------------------------------------- kernels
#: the operations of a decoder block a kernels provider may implement, with their signatures
KERNEL_OPS = {
    "rms_norm": "rms_norm(x [..., dim], weight [dim], eps) -> x / rms(x) * weight (in x's dtype, fp32 inside)",
    "swiglu": "swiglu(gate [..., ffn], up [..., ffn]) -> silu(gate) * up",
    "rope": "rope(x [tokens, heads, head_dim], cos, sin [tokens, 1, rot]) -> x rotated (rotate-half, first rot dims)",
    "add_rms_norm": "add_rms_norm(x [..., dim], residual [..., dim], weight [dim], eps) -> (rms_norm(h, weight, eps), "
                    "h) with h = x + residual in x's dtype: a block's residual add and the norm after it",
}


@runtime_checkable
class Kernels(Protocol):
    """``+kernels=<name>``: the non-attention operations of a decoder block (:data:`KERNEL_OPS`).

    The trainer binds the provider to every module of a model that computes one of these (the
    native families' norms, MLPs and experts, attention's RoPE, the residual add before each block's
    second norm); an operation the provider does not list in ``ops`` runs as PyTorch ops
    (:mod:`core.kernels`), ``add_rms_norm`` as the add followed by the provider's ``rms_norm``. Each operation is differentiable
    (autograd) and must be traceable by torch.compile (a custom op, or plain PyTorch)."""

    name: str
    label: str  #: the Kernels column of a row ("triton")
    provider: str  #: the package and version that ran ("triton 3.6.0")
    ops: frozenset  #: the operations of :data:`KERNEL_OPS` it implements
    #: its operations are the PyTorch ops the models compute anyway (nothing to bind; any family
    #: runs it, the families whose modules take no provider included)
    torch_ops: bool = False

    def prepare(self) -> None:
        """Called once on the row's device before the model is built (load, compile, smoke test);
        ``ValueError`` with one line."""

    def rms_norm(self, x, weight, eps: float): ...

    def swiglu(self, gate, up): ...

    def rope(self, x, cos, sin): ...

    def add_rms_norm(self, x, residual, weight, eps: float):
        """Optional: a provider that lists only ``rms_norm`` gets ``x + residual`` as a PyTorch op
        followed by its own ``rms_norm`` (:class:`core.kernels.Bound`)."""


@dataclass(kw_only=True)
class PeerSpec:
    """What a peer is asked to run: one row's configuration, in plain values (it is written to the
    peer's work folder as ``spec.json``, so a peer's child process needs no stepbench import)."""

    model: str  #: the row's model label (``Qwen3-0.6B``)
    hf_name: str  #: the published model it stands for (``Qwen/Qwen3-0.6B``)
    hf_config: dict  #: a transformers ``config.json`` of the model's shapes (the family's ``hf_config``)
    task: str  #: ``rl`` or ``sft``
    adapter: str  #: ``full`` or ``lora``
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple = ()  #: the module names LoRA adapts (stepbench's adapter's own discovery)
    lora_expert_targets: tuple = ()  #: the 3-D routed-expert weights LoRA adapts (peft's ``target_parameters``)
    seq_len: int
    micro_batches: int
    steps: int  #: steps run; the first is warm-up
    attn: str  #: the row's attention name (``fa3``, ``fa2``, ``sdpa``, ...)
    ac: str  #: the row's activation-memory name (``recompute``, ``offload``, ``none``)
    ac_mode: str = "full"  #: its mode (``full``; ``selective`` / ``attention`` keep or offload more)
    compile: bool
    seed: int
    device: str  #: ``cuda`` or ``cpu``
    handoff: bool  #: stepbench's row hands the weights off every step (RL full fine-tuning: bf16 weights to host memory)
    options: dict = field(default_factory=dict)  #: the peer's own options (``conf/peer/<name>.yaml``)


@dataclass(kw_only=True)
class PeerCommand:
    """How to run a peer: a child process (``argv`` in ``cwd`` with ``env`` added to stepbench's)."""

    argv: list
    cwd: str | None = None  #: where the child runs (relative paths in argv are taken from there)
    env: dict = field(default_factory=dict)
    #: variables of stepbench's environment the child must not inherit: names, or prefixes ending in ``*``
    unset_env: tuple = ()


@dataclass(kw_only=True)
class PeerResult:
    """What a peer reported, in its own words: its TPS and peak memory as it measured them (a peer
    that reports step times too gets its spread), what it is (version or commit) and what one of its
    steps did beyond forward, backward and the optimizer."""

    tps: float
    peak_mem_gib: float | None
    step_s: list = field(default_factory=list)  #: measured whole-step seconds, where the peer reports them
    version: str = ""  #: the peer's version or commit
    attn_provider: str = ""  #: the attention kernel it ran, in its words
    per_step_work: str = ""  #: e.g. "bf16 weights gathered to host memory; AdamW step"
    precision: str = ""  #: e.g. "fp32 master weights, bf16 autocast"
    compiled: bool | None = None  #: whether it ran torch.compile'd code (the row's Compile field); None: the row's option
    extra: dict = field(default_factory=dict)  #: anything else the peer reported (stored with the row)


@runtime_checkable
class Peer(Protocol):
    """``+peer=<name>``: another trainer that runs the row's configuration in a child process, so
    the row is measured by that trainer instead of by stepbench (the report's peers view sets it
    beside stepbench's row of the same call).

    ``runs_stepbench`` true marks the default (``peer=none``): stepbench measures the row itself and
    the core never calls the other members. ``label`` names the implementation in the report (the
    row's ``impl``, and a suffix of its model label). ``why_not(spec)`` says in one line why the peer
    cannot run this row here (a missing checkout or dependency, a configuration it has no way to
    run), or None; it must not start the peer. ``command(spec, workdir)`` is the child to start
    (``workdir`` holds ``spec.json`` and takes the peer's outputs); ``result(workdir, log)`` reads
    what the peer reported after it exited with status 0 (``log``: its last output lines), or raises
    ``ValueError`` with one line. Its factory is ``factory(options, ctx)`` like every kind's (bad
    options: ``ValueError`` with one line); it takes paths from the folder stepbench runs in.

    What a result means: ``tps`` is the peer's own throughput figure, ``peak_mem_gib`` its own peak
    (say in ``extra["tps_definition"]`` how each is defined: which steps, what is synchronised,
    reserved or allocated memory); ``step_s``, where given, are whole-step seconds of its timed steps
    (``seq_len x micro_batches`` tokens each), from which the core derives the row's step time."""

    name: str
    label: str
    runs_stepbench: bool
    #: its options that change what it measures (a row off their defaults is another row: its variant);
    #: the others (where its checkout is, its timeout) change nothing measured
    measured_options: tuple

    def why_not(self, spec: PeerSpec) -> str | None: ...

    def command(self, spec: PeerSpec, workdir: str) -> PeerCommand: ...

    def result(self, workdir: str, log: list) -> PeerResult: ...


@runtime_checkable
class TrainableModel(Protocol):
    """What a model family's ``build(args)`` returns (see :class:`core.models.common.CausalLM`).

    Besides the members below, the trainer reads these where a model has them: ``compute_dtype``
    (set by the trainer: the activations' dtype of a model that casts its weights), ``head_compiled``
    (set with ``compile=true``: compile the log-prob head's per-chunk work), ``own_checkpointing``
    (the model checkpoints its own layers when an AC strategy sets a ``block_runner``: transformers'
    plain loop), ``init_buffers()`` (called after the seeded init, for buffers the meta device left
    empty, e.g. RoPE tables) and ``attention_provider()`` (the attention the model runs itself, stored
    in the row instead of the backend's). Attention layers are bound to the row's backend by
    setting ``backend`` on every :class:`core.models.common.Attention` and every module that has
    ``stepbench_attention = True`` (:func:`core.models.common.attention_modules`).
    """

    layers: Any  #: the transformer blocks (``nn.ModuleList``): AC, compile and FSDP2 wrap each
    block_runner: Callable  #: ``(block, x, rope, meta) -> x``; an AC strategy replaces it
    head_budget_mib: int  #: MiB of logits the log-prob head may hold at once
    #: its layers cast every weight to the activations' dtype where used, so fp32 masters can run
    #: without FSDP2's mixed precision on one GPU
    casts_weights: bool
    #: its layers compute adapter factors in the activations' dtype (adapters may stay out of FSDP2)
    casts_adapters: bool

    def forward(self, input_ids, position_ids, meta, targets):
        """Packed tokens ``[T]`` -> (per-token fp32 log-probs of ``targets``, entropies), without
        materializing ``[T, vocab]`` fp32 logits."""


@dataclass
class ModelFamily:
    """``model=<yaml>`` with ``family: <name>``: a registered model family.

    ``flavours``: ModelArgs by name (``"0.6B"``); ``build(args)`` returns a
    :class:`TrainableModel` on the current (meta) device; ``from_config(cfg)``, for families whose
    shapes come from a config (``model.config=PATH``), returns ModelArgs from the whole composed
    config (a dict) or raises ``ValueError`` with one line. ``implementation(args)`` names who runs
    the model in the report ("native" for stepbench's own code); ``own_loop(args)``: the model runs
    its own loop (its own activation checkpointing and attention kernel choice, as transformers'
    plain loop), so the report's peers view pairs it by attention kernel, not by plugins. ``casts_weights``,
    ``casts_adapters``, ``fuses_projections``: what its models do (see :class:`TrainableModel`),
    read before a model is built and from a stored row's config."""

    name: str
    flavours: dict
    build: Callable
    doc: str = ""
    from_config: Callable | None = None
    implementation: Callable[[Any], str] = lambda args: "native"
    own_loop: Callable[[Any], bool] = lambda args: False
    casts_weights: bool = True
    casts_adapters: bool = True
    fuses_projections: bool = True
    #: its modules take a kernels provider (:class:`Kernels`: the native families' do); a family that
    #: runs another library's modules (transformers) runs only ``+kernels=eager``
    takes_kernels: bool = True
    #: ``hf_config(args) -> dict``: a transformers ``config.json`` of the model's shapes (what a peer
    #: trainer builds: ``+peer=...``); None where the family has no transformers counterpart
    hf_config: Callable[[Any], dict] | None = None
