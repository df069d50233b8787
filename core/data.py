"""Micro-batches of packed documents: tokens, position_ids, cu_seqlens and the RL/SFT fields.

One micro-batch is ``seq_len`` tokens, the concatenation of one or more documents (no padding).
Attention metadata is derived from the document lengths once per micro-batch, on the host, so the
step never waits for the GPU to learn where documents end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AttnMeta:
    """Where packed documents start and end, for varlen attention kernels."""

    cu_seqlens: torch.Tensor  # int32 [n_docs + 1] on the compute device
    cu_seqlens_host: tuple[int, ...]  # same values on the host (no device sync to read them)
    max_seqlen: int

    @property
    def doc_lens(self) -> list[int]:
        c = self.cu_seqlens_host
        return [c[i + 1] - c[i] for i in range(len(c) - 1)]

    @staticmethod
    def from_doc_lens(doc_lens: list[int], device) -> "AttnMeta":
        cu = [0]
        for n in doc_lens:
            cu.append(cu[-1] + n)
        return AttnMeta(torch.tensor(cu, dtype=torch.int32, device=device), tuple(cu), max(doc_lens))


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # int64 [T]
    position_ids: torch.Tensor  # int64 [T], restarting at 0 in each document
    targets: torch.Tensor  # int64 [T], next token in the same document (0 where none)
    loss_mask: torch.Tensor  # bool [T], False on each document's last token
    meta: AttnMeta
    advantages: torch.Tensor | None = None  # fp32 [T] (RL)
    inference_logprobs: torch.Tensor | None = None  # fp32 [T] (RL)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device) -> "MicroBatch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        meta = AttnMeta(self.meta.cu_seqlens.to(device), self.meta.cu_seqlens_host, self.meta.max_seqlen)
        return MicroBatch(
            mv(self.input_ids), mv(self.position_ids), mv(self.targets), mv(self.loss_mask), meta,
            mv(self.advantages), mv(self.inference_logprobs),
        )


def doc_lengths(seq_len: int, packing: str, gen: torch.Generator) -> list[int]:
    """Document lengths that fill ``seq_len`` tokens.

    ``single``: one document of seq_len tokens (prime-rl's fake RL micro-batch).
    ``random``: documents of 1..seq_len//8 tokens until full (prime-rl's sample generator).
    ``fixed:N``: documents of N tokens (the last one shorter if N does not divide seq_len).
    """
    if packing == "single":
        return [seq_len]
    if packing == "random":
        lens, total, hi = [], 0, max(2, seq_len // 8)
        while total < seq_len:
            n = min(int(torch.randint(1, hi, (1,), generator=gen)), seq_len - total)
            lens.append(n)
            total += n
        return lens
    if packing.startswith("fixed:"):
        n = int(packing.split(":", 1)[1])
        return [n] * (seq_len // n) + ([seq_len % n] if seq_len % n else [])
    raise ValueError(f"unknown packing '{packing}': use single, random or fixed:N")


def make_micro_batch(
    seq_len: int, vocab_size: int, task: str, packing: str = "single", seed: int = 0,
    logprob_noise: float = 0.3,
) -> MicroBatch:
    """A seeded fake micro-batch on the host.

    RL fields: advantages ~ N(0, 1); inference logprobs near what a freshly initialized model
    predicts (log(1/vocab) plus noise), so importance ratios stay mostly inside [0.125, 8].
    """
    gen = torch.Generator().manual_seed(seed)
    lens = doc_lengths(seq_len, packing, gen)
    input_ids = torch.randint(0, vocab_size, (seq_len,), generator=gen)
    position_ids = torch.cat([torch.arange(n) for n in lens])
    targets = torch.roll(input_ids, -1)
    loss_mask = torch.ones(seq_len, dtype=torch.bool)
    ends = torch.tensor(AttnMeta.from_doc_lens(lens, "cpu").cu_seqlens_host[1:]) - 1
    loss_mask[ends] = False
    targets[ends] = 0
    mb = MicroBatch(input_ids, position_ids, targets, loss_mask, AttnMeta.from_doc_lens(lens, "cpu"))
    if task == "rl":
        mb.advantages = torch.randn(seq_len, generator=gen)
        mb.inference_logprobs = -math.log(vocab_size) + logprob_noise * torch.randn(seq_len, generator=gen)
    return mb
