"""``fa3``: FlashAttention-3 varlen through the installed ``flash_attn_interface`` (SM90 only).

FA3 has no wheel on PyPI: ``python -m core.fa3_build --source PATH`` builds the ``hopper/``
directory of a flash-attention checkout (github.com/Dao-AILab/flash-attention) with only what
stepbench needs and installs it. stepbench only imports it.
"""

from __future__ import annotations

import importlib.util

from core import hookimpl
from core.errors import first_line
from core.contracts import AttentionBackend
from plugins.attention.common import need_cuda, package_version


def missing_parts() -> str | None:
    """What of an FA3 install is missing (None when the parts are there): the interface module, its
    compiled extension, or the build-config module the interface imports."""
    if importlib.util.find_spec("flash_attn_interface") is None:
        return "flash_attn_interface is not installed"
    try:
        has_c = importlib.util.find_spec("flash_attn_3._C") is not None
    except ModuleNotFoundError:
        has_c = False
    if not has_c:
        return "flash_attn_3._C (the compiled extension) is missing"
    if importlib.util.find_spec("flash_attn_config") is None:
        return "flash_attn_config (written by the FA3 build) is missing"
    return None


def smoke_test(backend) -> None:
    """One tiny causal varlen call (2 documents): raises if the kernels cannot run here."""
    import torch

    from core.data import AttnMeta

    meta = AttnMeta.from_doc_lens([5, 11], "cuda")
    q = torch.randn(16, 2, 128, device="cuda", dtype=torch.bfloat16)
    out = backend(q, q[:, :1].contiguous(), q[:, :1].contiguous(), meta)
    torch.cuda.synchronize()
    if out.shape != q.shape or not torch.isfinite(out).all():
        raise RuntimeError("FA3 smoke test gave a wrong shape or non-finite values")


class FA3(AttentionBackend):
    """FA3's varlen kernels; the package is imported and checked by :meth:`prepare`, on the GPU."""

    name, label, kernel = "fa3", "FA3", "fa3"
    repeats_kv = False

    def __init__(self):
        self.fn = None

    @property
    def provider(self) -> str:
        return f"flash_attn_3 {package_version('flash_attn_3', 'flash-attn-3')}"

    def prepare(self) -> None:
        """Import the kernels and run one tiny call: a broken install fails here with one line."""
        try:
            from flash_attn_interface import flash_attn_varlen_func

            self.fn = flash_attn_varlen_func
            smoke_test(self)
        except Exception as e:
            first = first_line(e, with_type=False) or type(e).__name__
            raise ValueError(f"attn fa3 does not run here ({type(e).__name__}: {first}): rebuild it with "
                             "python -m core.fa3_build --source PATH, or use +attn=fa2") from None

    def supports(self, args) -> str | None:
        return supports(args)

    @property
    def features(self) -> frozenset:
        """A scale always; sliding windows and soft-capping where the build has them (the trimmed
        build of ``core.fa3_build`` switches both off)."""
        return built_features()

    def __call__(self, q, k, v, meta, **features):
        from plugins.attention.fa2 import flash_kwargs

        m = meta.max_seqlen
        out = self.fn(q, k, v, meta.cu_seqlens, meta.cu_seqlens, m, m, **flash_kwargs(features))
        return out[0] if isinstance(out, tuple) else out


def why_not(ctx):
    if ctx.device != "cuda":
        return need_cuda(ctx).replace("+attn=sdpa", "+attn=sdpa (FA3 needs an SM90 GPU)")
    if ctx.capability is not None and tuple(ctx.capability) != (9, 0):
        return f"FA3 needs an SM90 GPU (this is SM{ctx.capability[0]}{ctx.capability[1]}); use +attn=fa2"
    if not ctx.installed:  # a profile predicted for: what is installed here does not count
        return None
    missing = missing_parts()
    if missing:
        return f"{missing}: build FA3 with python -m core.fa3_build --source PATH, or use +attn=fa2"
    return None


HEAD_DIMS = (64, 96, 128, 192, 256)


def build_flags() -> dict:
    """The installed FA3's build switches (empty when unknown)."""
    try:
        from flash_attn_config import CONFIG
    except Exception:
        return {}
    return CONFIG.get("build_flags", {}) if isinstance(CONFIG, dict) else {}


def built_features() -> frozenset:
    """The attention features the installed FA3 build has kernels for."""
    flags = build_flags()
    return frozenset({"scale"} | {f for f, switch in (("window", "LOCAL"), ("softcap", "SOFTCAP"))
                                  if not flags.get(f"FLASHATTENTION_DISABLE_{switch}", False)})


def built_head_dims() -> tuple[int, ...]:
    """The head dims the installed FA3 has kernels for, from its build config (all when unknown)."""
    try:
        from flash_attn_config import CONFIG
    except Exception:
        return HEAD_DIMS
    flags = CONFIG.get("build_flags", {}) if isinstance(CONFIG, dict) else {}
    return tuple(d for d in HEAD_DIMS if not flags.get(f"FLASHATTENTION_DISABLE_HDIM{d}", False))


def supports(args) -> str | None:
    """Why FA3 cannot run this model's attention (None when it can)."""
    built = built_head_dims()
    if args.head_dim not in built:
        return (f"this FA3 build has kernels for head_dim {', '.join(map(str, built))}, the model has "
                f"{args.head_dim}: use +attn=fa2 (or rebuild FA3 with that head dim)")
    return None


@hookimpl
def stepbench_register_attention(register):
    register("fa3", lambda options, ctx: FA3(), why_not, doc="FlashAttention-3 varlen, native GQA (SM90, flash_attn_3)")
