"""The chunked logprob head against a naive fp32 reference; the RL loss against a hand computation."""

import math

import pytest
import torch

from core.losses import chunked_logprobs, naive_logprobs, rl_loss, sft_loss


def _inputs(T, H, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(T, H, generator=g)).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(V, H, generator=g)).to(dtype).requires_grad_()
    t = torch.randint(0, V, (T,), generator=g)
    return h, w, t


@pytest.mark.parametrize("T,H,V", [(1, 8, 50), (300, 32, 1000), (513, 16, 3001)])
@pytest.mark.parametrize("task", ["sft", "rl"])
def test_chunked_head_matches_reference(T, H, V, task):
    h, w, t = _inputs(T, H, V, torch.float64, seed=T + V)
    mask = torch.rand(T, generator=torch.Generator().manual_seed(1)) > 0.2
    adv, inf = torch.randn(T, dtype=torch.float64), -math.log(V) + 0.3 * torch.randn(T, dtype=torch.float64)

    def loss_of(lp):
        return sft_loss(lp, mask)[0] if task == "sft" else rl_loss(lp, inf, adv, mask)[0]

    lp, ent = chunked_logprobs(h, w, t, budget_mib=0)  # smallest chunks: many slices
    gh, gw = torch.autograd.grad(loss_of(lp.double()), (h, w))
    lp_r, ent_r = naive_logprobs(h, w, t)
    gh_r, gw_r = torch.autograd.grad(loss_of(lp_r.double()), (h, w))
    assert not ent.requires_grad
    torch.testing.assert_close(lp.double(), lp_r.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), ent_r.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, gh_r, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, gw_r, rtol=1e-4, atol=1e-6)


def test_chunked_head_bf16_within_tolerance():
    h, w, t = _inputs(257, 64, 2048, torch.bfloat16, seed=3)
    g = torch.randn(257)
    lp, _ = chunked_logprobs(h, w, t, budget_mib=0)
    gh, gw = torch.autograd.grad(lp, (h, w), g)
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    lp_r, _ = naive_logprobs(h64, w64, t)
    gh_r, gw_r = torch.autograd.grad(lp_r, (h64, w64), g.double())
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(lp, lp_r) < 1e-2 and rel(gh, gh_r) < 2e-2 and rel(gw, gw_r) < 2e-2


def test_compiled_head_matches_eager_head():
    """compile=true's head (torch.compile'd per-chunk work, larger chunks) against the eager head:
    fp32 values and gradients within fp32 rounding, with a ragged last chunk and vocabulary slice."""
    h, w, t = _inputs(300, 32, 1000, torch.float32, seed=5)
    g = torch.randn(300, generator=torch.Generator().manual_seed(2))
    out = []
    for compiled in (False, True):
        lp, ent = chunked_logprobs(h, w, t, budget_mib=0, compiled=compiled)
        out.append((lp, ent, *torch.autograd.grad(lp, (h, w), g)))
    assert not out[1][1].requires_grad
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_rl_loss_hand_computed():
    lp = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    inf = torch.tensor([-1.0, -2.0 - math.log(2.0), -0.5 + math.log(10.0), -3.0])  # ratios 1, 2, 0.1, 1
    adv = torch.tensor([1.0, -1.0, 5.0, 2.0])
    mask = torch.tensor([True, True, True, False])  # last token masked; third out of bounds (0.1 < 0.125)
    loss, info = rl_loss(lp, inf, adv, mask)
    # kept: tokens 0 and 1 -> -(1*1*-1 + 2*-1*-2) / 2 = -(−1 + 4) / 2 = -1.5
    assert info["kept"].item() == 2
    assert loss.item() == pytest.approx(-1.5)
    (g,) = torch.autograd.grad(loss, lp)
    # d/dlp of -(r.detach() * A * lp)/kept
    assert torch.allclose(g, torch.tensor([-0.5, 1.0, 0.0, 0.0]))


def test_sft_loss_is_masked_mean_nll():
    lp = torch.tensor([-1.0, -2.0, -4.0])
    loss, _ = sft_loss(lp, torch.tensor([True, False, True]))
    assert loss.item() == pytest.approx(2.5)
