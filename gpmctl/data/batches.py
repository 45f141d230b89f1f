"""The batches of one training epoch: which pairs each rank's micro-batches hold, in which order.

Used by every training loop (reward model, frozen-backbone head, GPO). The order is a permutation seeded
by (seed, epoch), so a resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import math

import torch

MEGA_BATCH_STEPS = 8
"""Length grouping sorts this many consecutive batches together (64 pairs at batch 8; on
realistic length spreads that cut the padding of random batches from 37% to 24%)."""


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, lengths: list[int] | None = None
) -> list[list[int]]:
    """This rank's micro-batches of one epoch: a permutation seeded by (seed, epoch), so a resumed run
    sees exactly the batches the interrupted one would have seen. Every rank gets the same count.
    With `lengths` (one per pair) the batches are length-grouped (`_length_grouped`)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * world
    steps = n // per_step if world > 1 else math.ceil(n / batch_size)
    if lengths is None:
        global_batches = [order[s * per_step : (s + 1) * per_step] for s in range(steps)]
    else:
        global_batches = _length_grouped(order, lengths, per_step, g)[:steps]
    return [batch[rank::world] for batch in global_batches]


def _length_grouped(order: list[int], lengths: list[int], per_step: int, generator: torch.Generator) -> list[list[int]]:
    """`order` cut into mega-batches of MEGA_BATCH_STEPS global batches, each sorted by length (longest
    first) and cut into batches; the full batches are then shuffled (a short last batch stays last)."""
    mega = per_step * MEGA_BATCH_STEPS
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + per_step] for i in range(0, len(chunk), per_step)]
    short = [b for b in batches if len(b) < per_step]
    full = [b for b in batches if len(b) == per_step]
    return [full[i] for i in torch.randperm(len(full), generator=generator).tolist()] + short
