"""stepbench's Triton kernels for the block operations (:data:`core.contracts.KERNEL_OPS`), each a
``torch.library.triton_op`` with its backward: in eager code it is one call; torch.compile traces
into it, so the compiled block launches the Triton kernel from its own generated code (no custom-op
dispatch on the host per call, and the op's allocations and reductions are compiled with the rest).

- ``rms_norm``: one program per row, fp32 inside; backward recomputes ``x * rstd`` from the saved
  per-row ``rstd``, a tile of rows a step, each program over a contiguous run of rows writing one
  fp32 partial weight gradient, which a second kernel sums and casts.
- ``add_rms_norm``: the residual add in the norm's forward (``h`` written beside ``y``: one read of
  each input, no separate add kernel); backward is RMSNorm's, adding ``h``'s own gradient to ``dx``.
- ``swiglu``: ``silu(gate) * up`` and its two gradients, elementwise, fp32 inside; ``gate`` and
  ``up`` may be column slices of one fused GEMM output (any row stride).
- ``rope``: rotate-half RoPE of one token (all its heads, a [heads, half] tile) per program, the
  features past ``cos``'s width passed through; backward is the inverse rotation.

Imported only where the ``triton`` provider is made (on a GPU, or on a CPU under
``TRITON_INTERPRET=1``, where Triton's interpreter runs the same kernels: the CPU suite's check).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

#: the RMSNorm backward's launch per (rows, width): programs per streaming multiprocessor (each takes
#: a contiguous run of rows and writes one fp32 partial weight gradient), rows per step (an [R, width]
#: tile) and warps per program, and whether each step loads the next tile before it computes (so a
#: program keeps two tiles' loads in flight). ``rms_norm_bwd_config`` chooses, from
#: ``benchmarks/rmsnorm_bwd_sweep.py`` on the H100 (benchmarks/results/explore/2026-12-07-s22{a,b}-*):
#: two programs per SM, a tile of about 4096 elements and the prefetch were at or near the fastest
#: launch at every shape (the prefetch gained 5-12%).
PROGRAMS_PER_SM = 2
TILE_ELEMENTS = 4096
PREFETCH = True
#: the partial weight gradients' sum: (rows, columns) of its tile and its warps (2.3-2.5 us at every
#: shape of the s22b sweep, where (32, 32, 4) took 2.8-3.0)
REDUCE = (64, 16, 4)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def rms_norm_bwd_grid(n: int, programs_per_sm: int, r: int, device) -> tuple[int, int]:
    """(rows per program, a whole number of R-row tiles; programs) of the RMSNorm backward over ``n`` rows."""
    rows = max(r, triton.cdiv(triton.cdiv(max(n, 1), programs_per_sm * _sm_count(device)), r) * r)
    return rows, max(triton.cdiv(n, rows), 1)


def rms_norm_bwd_config(n: int, d: int, device) -> tuple[int, int, int, bool]:
    """(programs per SM, rows per step R, warps, prefetch) of the RMSNorm backward for ``n`` rows of
    width ``d``."""
    block = triton.next_power_of_2(d)
    return PROGRAMS_PER_SM, max(1, min(64, TILE_ELEMENTS // block)), 4 if block in (1024, 2048) else 8, PREFETCH


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[rows, last]`` with a unit last stride (a view where it can be)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x.reshape(-1, x.shape[-1])


# ------------------------------------------------------------------------------------ RMSNorm
@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    _norm_row(x, W, Y, RSTD, row, stride_y, cols, m, D, eps)


@triton.jit
def _add_rms_norm_fwd(X, RES, W, Y, H, RSTD, stride_x, stride_r, stride_y, stride_h, D, eps, BLOCK: tl.constexpr):
    """h = x + residual (rounded to h's dtype, as the PyTorch add is), then the norm of h."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    r = tl.load(RES + row * stride_r + cols, mask=m, other=0.0).to(tl.float32)
    h = (x + r).to(H.dtype.element_ty)
    tl.store(H + row * stride_h + cols, h, mask=m)
    _norm_row(h.to(tl.float32), W, Y, RSTD, row, stride_y, cols, m, D, eps)


@triton.jit
def _norm_row(x, W, Y, RSTD, row, stride_y, cols, m, D, eps):
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=m)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW, DH, stride_dy, stride_x, stride_dx, stride_dh, N, D, rows_per_program,
                  R: tl.constexpr, BLOCK: tl.constexpr, PREFETCH: tl.constexpr, HAS_DH: tl.constexpr):
    """dx (plus DH, the gradient reaching the norm's input by another path, where HAS_DH: the
    residual of ``add_rms_norm``) and one fp32 partial weight gradient per program."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    acc = tl.zeros([R, BLOCK], dtype=tl.float32)
    start = pid.to(tl.int64) * rows_per_program
    end = tl.minimum(start + rows_per_program, N)
    if PREFETCH:  # the first tile, loaded before the loop
        r0 = start + tl.arange(0, R)
        mk0 = (r0 < end)[:, None] & m[None, :]
        x_next = tl.load(X + r0[:, None] * stride_x + cols[None, :], mask=mk0, other=0.0)
        dy_next = tl.load(DY + r0[:, None] * stride_dy + cols[None, :], mask=mk0, other=0.0)
    else:
        x_next = tl.zeros([R, BLOCK], dtype=X.dtype.element_ty)
        dy_next = tl.zeros([R, BLOCK], dtype=DY.dtype.element_ty)
    for k in range(start, end, R):  # an [R, BLOCK] tile of rows a step
        r = k + tl.arange(0, R)
        ok = r < end
        mk = ok[:, None] & m[None, :]
        if PREFETCH:  # this tile was loaded by the step before; load the next one now
            x, dy = x_next, dy_next
            rn = r + R
            mkn = (rn < end)[:, None] & m[None, :]
            x_next = tl.load(X + rn[:, None] * stride_x + cols[None, :], mask=mkn, other=0.0)
            dy_next = tl.load(DY + rn[:, None] * stride_dy + cols[None, :], mask=mkn, other=0.0)
        else:
            x = tl.load(X + r[:, None] * stride_x + cols[None, :], mask=mk, other=0.0)
            dy = tl.load(DY + r[:, None] * stride_dy + cols[None, :], mask=mk, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        rstd = tl.load(RSTD + r, mask=ok, other=0.0)
        xhat = x * rstd[:, None]
        wdy = w[None, :] * dy
        c = tl.sum(xhat * wdy, 1) / D
        dx = (wdy - xhat * c[:, None]) * rstd[:, None]
        if HAS_DH:
            dx += tl.load(DH + r[:, None] * stride_dh + cols[None, :], mask=mk, other=0.0).to(tl.float32)
        tl.store(DX + r[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mk)
        acc += dy * xhat
    tl.store(DW + pid * D + cols, tl.sum(acc, 0), mask=m)


@triton.jit
def _sum_rows_cast(P, OUT, programs, D, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[d] = sum over p of P[p, d] (fp32), stored in OUT's dtype: the partial weight gradients."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = cols < D
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for p in range(0, programs, BLOCK_P):
        rows = p + tl.arange(0, BLOCK_P)
        acc += tl.load(P + rows[:, None] * D + cols[None, :], mask=(rows < programs)[:, None] & m[None, :], other=0.0)
    tl.store(OUT + cols, tl.sum(acc, 0).to(OUT.dtype.element_ty), mask=m)


@torch.library.triton_op("stepbench::rms_norm", mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = _rows(x)
    n, d = x2.shape
    y = torch.empty((n, d), dtype=x.dtype, device=x.device)
    rstd = torch.empty(n, dtype=torch.float32, device=x.device)
    if n:
        block = triton.next_power_of_2(d)
        wrap_triton(_rms_norm_fwd)[(n,)](x2, weight.contiguous(), y, rstd, x2.stride(0), y.stride(0), d, eps,
                                         BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return y.view(x.shape), rstd


def rms_norm_backward_launch(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                             config: tuple | None = None, reduce: tuple | None = None,
                             dh: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The RMSNorm backward's two kernels (``config``: as ``rms_norm_bwd_config`` returns, or its
    choice; ``reduce``: as :data:`REDUCE`): ``dx`` (plus ``dh`` where given) and the weight gradient
    in the weight's dtype."""
    x2, dy2 = _rows(x), _rows(dy)
    dh2 = _rows(dh) if dh is not None else dy2  # DH is not read without HAS_DH
    n, d = x2.shape
    dx = torch.empty((n, d), dtype=x.dtype, device=x.device)
    dw = torch.empty(d, dtype=weight.dtype, device=x.device)
    pps, r, warps, prefetch = config or rms_norm_bwd_config(n, d, x.device)
    rows, programs = rms_norm_bwd_grid(n, pps, r, x.device)
    partial = torch.empty((programs, d), dtype=torch.float32, device=x.device)  # every program writes its row
    block = triton.next_power_of_2(d)
    wrap_triton(_rms_norm_bwd)[(programs,)](dy2, x2, weight.contiguous(), rstd, dx, partial, dh2, dy2.stride(0),
                                            x2.stride(0), dx.stride(0), dh2.stride(0), n, d, rows, R=r,
                                            BLOCK=block, PREFETCH=bool(prefetch), HAS_DH=dh is not None,
                                            num_warps=warps)
    block_p, block_d, reduce_warps = reduce or REDUCE
    wrap_triton(_sum_rows_cast)[(triton.cdiv(d, block_d),)](partial, dw, programs, d, BLOCK_P=block_p,
                                                             BLOCK_D=block_d, num_warps=reduce_warps)
    return dx.view(x.shape), dw


@torch.library.triton_op("stepbench::rms_norm_backward", mutates_args=())
def rms_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_backward_launch(dy, x, weight, rstd)


def _rms_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_backward_op(dy, x, weight, rstd)
    return dx, dw, None


rms_norm_op.register_autograd(_rms_backward, setup_context=_rms_setup)


def rms_norm(x, weight, eps):
    return rms_norm_op(x, weight, float(eps))[0]


@torch.library.triton_op("stepbench::add_rms_norm", mutates_args=())
def add_rms_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x2, r2 = _rows(x), _rows(residual)
    n, d = x2.shape
    y = torch.empty((n, d), dtype=x.dtype, device=x.device)
    h = torch.empty((n, d), dtype=x.dtype, device=x.device)
    rstd = torch.empty(n, dtype=torch.float32, device=x.device)
    if n:
        block = triton.next_power_of_2(d)
        wrap_triton(_add_rms_norm_fwd)[(n,)](x2, r2, weight.contiguous(), y, h, rstd, x2.stride(0), r2.stride(0),
                                             y.stride(0), h.stride(0), d, eps, BLOCK=block,
                                             num_warps=8 if block >= 2048 else 4)
    return y.view(x.shape), h.view(x.shape), rstd


@torch.library.triton_op("stepbench::add_rms_norm_backward", mutates_args=())
def add_rms_norm_backward_op(dy: torch.Tensor, dh: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                             rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_backward_launch(dy, h, weight, rstd, dh=dh)


def _add_rms_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[2], output[2])


def _add_rms_backward(ctx, dy, dh, _drstd):
    h, weight, rstd = ctx.saved_tensors
    dx, dw = add_rms_norm_backward_op(dy, dh, h, weight, rstd)
    return dx, dx, dw, None  # x and residual reach h alike


add_rms_norm_op.register_autograd(_add_rms_backward, setup_context=_add_rms_setup)


def add_rms_norm(x, residual, weight, eps):
    y, h, _ = add_rms_norm_op(x, residual, weight, float(eps))
    return y, h


# ------------------------------------------------------------------------------------- SwiGLU
@triton.jit
def _swiglu_fwd(G, U, Y, cols_n, sg, su, sy, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < cols_n
    g = tl.load(G + row * sg + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(U + row * su + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * sy + cols, (g * tl.sigmoid(g) * u).to(Y.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd(DY, G, U, DG, DU, cols_n, sdy, sg, su, sdg, sdu, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < cols_n
    dy = tl.load(DY + row * sdy + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(G + row * sg + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(U + row * su + cols, mask=m, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(DU + row * sdu + cols, (dy * g * s).to(DU.dtype.element_ty), mask=m)
    tl.store(DG + row * sdg + cols, (dy * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=m)


SWIGLU_BLOCK = 1024


@torch.library.triton_op("stepbench::swiglu", mutates_args=())
def swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g2, u2 = _rows(gate), _rows(up)
    n, c = g2.shape
    y = torch.empty((n, c), dtype=gate.dtype, device=gate.device)
    if n and c:
        wrap_triton(_swiglu_fwd)[(n, triton.cdiv(c, SWIGLU_BLOCK))](g2, u2, y, c, g2.stride(0), u2.stride(0),
                                                                    y.stride(0), BLOCK=SWIGLU_BLOCK)
    return y.view(gate.shape)


@torch.library.triton_op("stepbench::swiglu_backward", mutates_args=())
def swiglu_backward_op(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dy2, g2, u2 = _rows(dy), _rows(gate), _rows(up)
    n, c = g2.shape
    dg = torch.empty((n, c), dtype=gate.dtype, device=gate.device)
    du = torch.empty((n, c), dtype=up.dtype, device=up.device)
    if n and c:
        wrap_triton(_swiglu_bwd)[(n, triton.cdiv(c, SWIGLU_BLOCK))](dy2, g2, u2, dg, du, c, dy2.stride(0),
                                                                    g2.stride(0), u2.stride(0), dg.stride(0),
                                                                    du.stride(0), BLOCK=SWIGLU_BLOCK)
    return dg.view(gate.shape), du.view(up.shape)


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx, dy):
    gate, up = ctx.saved_tensors
    return swiglu_backward_op(dy, gate, up)


swiglu_op.register_autograd(_swiglu_backward, setup_context=_swiglu_setup)


def swiglu(gate, up):
    return swiglu_op(gate, up)


# --------------------------------------------------------------------------------------- RoPE
@triton.jit
def _rope(X, COS, SIN, Y, sxt, sxh, syt, syh, sct, sst, H, HALF, PASS, BACKWARD: tl.constexpr,
          BLOCK_H: tl.constexpr, BLOCK: tl.constexpr, BLOCK_PASS: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # one token, all its heads: a [heads, half] tile
    h = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK)[None, :]
    mi = i < HALF
    m = (h < H) & mi
    xb = X + t * sxt + h * sxh
    yb = Y + t * syt + h * syh
    x1 = tl.load(xb + i, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(xb + HALF + i, mask=m, other=0.0).to(tl.float32)
    c1 = tl.load(COS + t * sct + i, mask=mi, other=0.0).to(tl.float32)
    c2 = tl.load(COS + t * sct + HALF + i, mask=mi, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + t * sst + i, mask=mi, other=0.0).to(tl.float32)
    s2 = tl.load(SIN + t * sst + HALF + i, mask=mi, other=0.0).to(tl.float32)
    if BACKWARD:  # the transposed rotation: dx1 = dy1 c1 + dy2 s2, dx2 = dy2 c2 - dy1 s1
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:  # y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    tl.store(yb + i, o1.to(Y.dtype.element_ty), mask=m)
    tl.store(yb + HALF + i, o2.to(Y.dtype.element_ty), mask=m)
    if BLOCK_PASS > 0:  # the features past the rotated ones, unchanged
        j = tl.arange(0, BLOCK_PASS)[None, :]
        mp = (h < H) & (j < PASS)
        tl.store(yb + 2 * HALF + j, tl.load(xb + 2 * HALF + j, mask=mp, other=0.0), mask=mp)


def _rope_launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    T, H, D = x.shape
    rot = cos.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos2, sin2 = _rows(cos.reshape(cos.shape[0], -1)), _rows(sin.reshape(sin.shape[0], -1))
    y = torch.empty((T, H, D), dtype=x.dtype, device=x.device)
    if T and H:
        half, rest = rot // 2, D - rot
        block_h, block = triton.next_power_of_2(H), triton.next_power_of_2(half)
        wrap_triton(_rope)[(T,)](x, cos2, sin2, y, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                                 cos2.stride(0), sin2.stride(0), H, half, rest, BACKWARD=backward, BLOCK_H=block_h,
                                 BLOCK=block, BLOCK_PASS=triton.next_power_of_2(rest) if rest else 0,
                                 num_warps=8 if block_h * block >= 4096 else 4)
    return y


@torch.library.triton_op("stepbench::rope", mutates_args=())
def rope_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    return _rope_launch(x, cos, sin, backward)


def _rope_setup(ctx, inputs, output):
    _, cos, sin, backward = inputs
    ctx.save_for_backward(cos, sin)
    ctx.backward = backward


def _rope_backward(ctx, dy):
    cos, sin = ctx.saved_tensors
    return rope_op(dy, cos, sin, not ctx.backward), None, None, None


rope_op.register_autograd(_rope_backward, setup_context=_rope_setup)


def rope(x, cos, sin):
    """RoPE of ``x`` ``[tokens, heads, head_dim]`` (gradient for ``x`` only: the tables are constants)."""
    return rope_op(x, cos, sin, False)
