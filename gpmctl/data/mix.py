"""Weighted mixtures of record sources: the one rule of recipe mixtures and of `gpmctl data mix`.

A mixture names its parts with weights, `a.jsonl:0.7,b.jsonl:0.3` in a recipe's data.train (read by
gpmctl.data.sources) or `a.jsonl:0.7 b.jsonl:0.3` for `gpmctl data mix` (a weight left out is 1).

Rule: smooth weighted round robin. Every step each part gains its weight in credit; the part with the
most credit (the first on ties) gives the next record and loses the total weight. So over any stretch
of the mixture each part's share stays within one record of weight / total, and the order is fixed by
the weights alone: there is no seed. Each part is read in its own order; a part that runs out starts
again from its first record, so a small part with a large weight is repeated. A recipe mixture holds as
many records as its parts together (at most data.max_samples); `gpmctl data mix` writes as many by
default, so with the same parts it writes exactly the records such a recipe reads, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from gpmctl.errors import ConfigError, DataError

T = TypeVar("T")


def parse_mix_source(spec: str) -> tuple[str, float]:
    """ "path:weight" -> (path, weight); a spec without ":weight" has weight 1."""
    path, sep, weight = spec.rpartition(":")
    if not sep or not path:
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        return spec, 1.0  # a colon in the path itself
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{spec}: the weight after ':' must be a positive number, got {weight!r}")
    return path, value


def weighted_interleave(weights: list[float]) -> Iterator[int]:
    """Endless part indices by smooth weighted round robin (see the module docstring)."""
    total = sum(weights)
    credit = [0.0] * len(weights)
    while True:
        for i, w in enumerate(weights):
            credit[i] += w
        best = max(range(len(weights)), key=lambda i: (credit[i], -i))
        credit[best] -= total
        yield best


def interleave(parts: list[tuple[str, float]], read: Callable[[str], Iterable[T]], total: int) -> Iterator[tuple[int, T]]:
    """`total` items of the parts (path, weight) in the order of the rule, as (part index, item).
    `read(path)` reads a part; it is called again each time the part runs out."""
    streams = [_endless(path, read) for path, _ in parts]
    order = weighted_interleave([weight for _, weight in parts])
    try:
        for _ in range(total):
            i = next(order)
            yield i, next(streams[i])
    finally:
        for stream in streams:
            stream.close()


def _endless(path: str, read: Callable[[str], Iterable[T]]) -> Iterator[T]:
    while True:
        empty = True
        for item in read(path):
            empty = False
            yield item
        if empty:  # the callers count every part first; a part gone empty since would loop for ever
            raise DataError(path, "holds no records any more (it changed while being mixed)")
