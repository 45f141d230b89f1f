"""Where a recipe's `data.train` / `data.eval` come from: a file, or a generator spec.

    path/to/pairs.jsonl                          any file gpmctl.data.records reads
    cyclic:train  cyclic:test                    the deterministic cyclic generator (gpmctl.data.cyclic),
    cyclic:test?seed=1&num_prompts=100           with CyclicConfig fields as query options
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from urllib.parse import parse_qsl

import yaml

from gpmctl.errors import ConfigError

CYCLIC = "cyclic:"


def parse_cyclic_spec(spec: str):
    """`cyclic:SPLIT?key=value&...` -> (split, CyclicConfig)."""
    from gpmctl.config import _coerce
    from gpmctl.data.cyclic import CyclicConfig

    body = spec[len(CYCLIC) :]
    split, _, query = body.partition("?")
    if split not in ("train", "test"):
        raise ConfigError(f"{spec}: the cyclic generator has splits train and test, not {split!r}")
    hints = typing.get_type_hints(CyclicConfig)
    options = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key not in hints:
            raise ConfigError(f"{spec}: unknown cyclic option {key!r} (known: {', '.join(hints)})")
        value = yaml.safe_load(raw)
        if typing.get_origin(hints[key]) is tuple and not isinstance(value, list):
            value = [value] if not isinstance(value, str) else [int(x) for x in value.split(",")]
        options[key] = _coerce(value, hints[key], f"{spec}: {key}")
    return split, dataclasses.replace(CyclicConfig(), **options)


def source_rows(spec: str) -> list[dict]:
    """The raw rows of a generator spec."""
    from gpmctl.data.cyclic import generate_cyclic

    split, cfg = parse_cyclic_spec(spec)
    train, test = generate_cyclic(cfg)
    return train if split == "train" else test


def read_source(spec: str, limit: int | None = None) -> Iterator:
    """PreferenceRecords of a file or a generator spec."""
    from gpmctl.data.records import parse_row, read_records

    if not spec.startswith(CYCLIC):
        return read_records(spec, limit=limit)
    rows = source_rows(spec)[:limit]
    return (parse_row(row, source=spec, line=i + 1) for i, row in enumerate(rows))
