"""Where a recipe's `data.train` / `data.eval` come from: files, folders, generators, the Hub, mixtures.

    path/to/pairs.jsonl                          any file gpmctl.data.files reads
    path/to/folder                               every readable file directly inside it (.jsonl,
                                                 .jsonl.gz, .json, .parquet), by sorted name, in turn
    cyclic:train  cyclic:reworded                the deterministic cyclic generator (gpmctl.data.cyclic),
    cyclic:new_items?blend_prompts=100           with CyclicConfig fields as query options; splits
    cyclic:test?seed=1&num_prompts=100           train, reworded (alias test), new_items, new_edges;
    cyclic:train?style=sentence                  style=sentence: responses as sentences, not words
    ultrafeedback:SOURCE                         UltraFeedback rows of SOURCE (a file, folder or Hub id),
    ultrafeedback:binarize:SOURCE                  binarised: best vs worst completion (the default)
    ultrafeedback:cyclic:SOURCE                  the paper's cyclic triples from the aspect ratings,
    ultrafeedback:cyclic:SOURCE?criteria=honesty>truthfulness>helpfulness
                                                 with the aspect of each link (default
                                                 instruction_following>honesty>truthfulness; `if` is
                                                 short for instruction_following)
    org/name  org/name:split                     a Hugging Face dataset through datasets.load_dataset,
    org/name@config  org/name@config:split       when no such local path exists (default split: train)
    a.jsonl:0.7,b.jsonl:0.3                      a mixture (weights default to 1; any source above as a
                                                 part, except another mixture; commas split parts, so a
                                                 cyclic part cannot list several cycle_lengths)

Mixtures follow the rule of gpmctl.data.mix (deterministic smooth weighted round robin; a part that runs
out starts again), the rule `gpmctl data mix` writes too. Reading a mixture reads each part once to count
it first.

Hub sources need the network or the datasets cache; offline (HF_DATASETS_OFFLINE=1) or without a
connection a missing dataset fails at once with one line naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import yaml

from gpmctl.data.mix import interleave, parse_mix_source
from gpmctl.errors import ConfigError, DataError
from gpmctl.utils import first_line

CYCLIC = "cyclic:"
ULTRAFEEDBACK = "ultrafeedback:"


def parse_cyclic_spec(spec: str):
    """`cyclic:SPLIT?key=value&...` -> (split, CyclicConfig)."""
    from gpmctl.config.loader import coerce
    from gpmctl.data.cyclic import SPLIT_ALIASES, TEST_SPLITS, CyclicConfig

    body = spec[len(CYCLIC) :]
    split, _, query = body.partition("?")
    if split not in ("train", *TEST_SPLITS, *SPLIT_ALIASES):
        raise ConfigError(
            f"{spec}: the cyclic generator has splits train, {', '.join(TEST_SPLITS)} (and test, "
            f"an alias of reworded), not {split!r}"
        )
    hints = typing.get_type_hints(CyclicConfig)
    options = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key not in hints:
            raise ConfigError(f"{spec}: unknown cyclic option {key!r} (known: {', '.join(hints)})")
        value = yaml.safe_load(raw)
        if typing.get_origin(hints[key]) is tuple and not isinstance(value, list):
            value = [value] if not isinstance(value, str) else [int(x) for x in value.split(",")]
        options[key] = coerce(value, hints[key], f"{spec}: {key}")
    return split, dataclasses.replace(CyclicConfig(), **options)


def source_rows(spec: str) -> list[dict]:
    """The raw rows of a generator spec."""
    from gpmctl.data.cyclic import cyclic_split

    split, cfg = parse_cyclic_spec(spec)
    return cyclic_split(cfg, split)


def parse_ultrafeedback_spec(spec: str):
    """`ultrafeedback:[binarize:|cyclic:]SOURCE[?criteria=a>b>c]` -> (SOURCE, ReadOptions)."""
    from gpmctl.data.formats import ReadOptions
    from gpmctl.data.ultrafeedback import DEFAULT_CYCLE_CRITERIA

    body = spec[len(ULTRAFEEDBACK) :]
    mode = "binarize"
    for name in ("binarize", "cyclic"):
        if body.startswith(name + ":"):
            mode, body = name, body[len(name) + 1 :]
    inner, _, query = body.partition("?")
    criteria: typing.Any = DEFAULT_CYCLE_CRITERIA
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "criteria":
            raise ConfigError(f"{spec}: unknown ultrafeedback option {key!r} (known: criteria)")
        criteria = value
    if not inner:
        raise ConfigError(f"{spec}: name a source after 'ultrafeedback:', e.g. ultrafeedback:cyclic:uf.jsonl")
    try:
        return inner, ReadOptions(format="ultrafeedback", ultrafeedback_mode=mode, criteria=criteria)
    except ValueError as e:
        raise ConfigError(f"{spec}: {e}") from None


def parse_mixture(spec: str) -> list[tuple[str, float]] | None:
    """`a.jsonl:0.7,b.jsonl:0.3` -> [(a.jsonl, 0.7), (b.jsonl, 0.3)]; None when `spec` is not a
    mixture: no comma, an existing path with a comma in its name, or one cyclic spec whose commas
    only separate numbers (`cyclic:train?cycle_lengths=3,4`)."""
    if "," not in spec or Path(spec).exists():
        return None
    parts = [p.strip() for p in spec.split(",")]
    if spec.startswith(CYCLIC) and all(p.isdigit() for p in parts[1:]):
        return None
    if any(not p for p in parts):
        raise ConfigError(f"{spec}: empty part in the mixture; write a.jsonl:0.7,b.jsonl:0.3")
    return [parse_mix_source(p) for p in parts]


def _mixture_items(parts: list[tuple[str, float]], limit: int | None, options) -> Iterator:
    counting = [source_items(path, options=options) for path, _ in parts]  # a missing part raises here, at once
    return _mixed(parts, counting, limit, options)


def _mixed(parts: list[tuple[str, float]], counting: list[Iterator], limit: int | None, options) -> Iterator:
    """Count each part's records (yielding its bad rows), then interleave the records by the mixture rule."""
    sizes = []
    for (path, _), items in zip(parts, counting):
        size = 0
        for fmt, item in items:
            if isinstance(item, DataError):
                yield fmt, item
            else:
                size += 1
        if size == 0:
            raise DataError(path, "no records to mix")
        sizes.append(size)

    def records(path: str) -> Iterator:
        return (pair for pair in source_items(path, options=options) if not isinstance(pair[1], DataError))

    total = sum(sizes) if limit is None else min(sum(sizes), limit)
    for _, pair in interleave(parts, records, total):
        yield pair


def _hub_id(spec: str) -> tuple[str, str | None, str] | None:
    """`name[@config][:split]` -> (name, config, split) when it looks like a Hub id, else None."""
    if spec.startswith(("/", ".", "~")) or "\\" in spec:
        return None
    head, _, split = spec.partition(":")
    name, _, config = head.partition("@")
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts) or Path(name).suffix in (".jsonl", ".json", ".parquet", ".gz"):
        return None
    return name, config or None, split or "train"


def _hub_rows(spec: str, name: str, config: str | None, split: str) -> Iterable:
    """The rows of a Hub dataset; any failure to reach it is one DataError line."""
    try:
        import datasets
    except ImportError:
        raise DataError(spec, "no such file, and the datasets package is not installed to read it as a Hub dataset") from None
    try:
        return datasets.load_dataset(name, config, split=split)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as e:
        first = first_line(e)
        raise DataError(
            spec,
            f"no such local path, and Hugging Face dataset {name!r}"
            f"{f' (config {config!r})' if config else ''} split {split!r} could not be loaded ({first}); "
            "pass a local file (.jsonl, .jsonl.gz, .json, .parquet) or folder instead",
        ) from None
    except Exception as e:  # datasets raises its own types for unknown splits/configs
        raise DataError(
            spec, f"Hugging Face dataset {name!r} could not be loaded: {type(e).__name__}: {e}; pass a local file instead"
        ) from None


def _folder_files(folder: Path) -> list[Path]:
    from gpmctl.data.files import SUFFIXES, data_suffix

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and data_suffix(p) in SUFFIXES)
    if not files:
        raise DataError(str(folder), f"folder holds no data files ({', '.join(SUFFIXES)})")
    return files


def read_source(spec: str, limit: int | None = None, options=None) -> Iterator:
    """PreferenceRecords of a source spec (see the module docstring). Problems raise DataError /
    ConfigError naming the source; a missing source raises before iteration starts. `options`
    (ReadOptions) apply to every part; its allow_empty_responses and keys also to ultrafeedback: parts."""
    from gpmctl.data.files import records_only

    return records_only(source_items(spec, limit, options))


def source_items(spec: str, limit: int | None = None, options=None) -> Iterator:
    """(format, record or DataError) for every row of a source spec, reading on past bad rows: what
    gpmctl.data.files.records_with_errors gives for one file, for any source. A mixture yields the bad rows
    of its parts while counting them, then its records. A missing source raises before iteration starts."""
    from gpmctl.data.files import records_with_errors, rows_with_errors

    spec = str(spec)
    mixture = parse_mixture(spec)
    if mixture is not None:
        if options is not None and options.format is not None:
            raise ConfigError(f"{spec}: a mixture cannot sit inside ultrafeedback:; prefix each part instead")
        return _mixture_items(mixture, limit, options)
    if spec.startswith(CYCLIC):
        return rows_with_errors(source_rows(spec), spec, limit=limit, options=options)
    if spec.startswith(ULTRAFEEDBACK):
        inner, uf_options = parse_ultrafeedback_spec(spec)
        if options is not None:
            uf_options = dataclasses.replace(uf_options, allow_empty_responses=options.allow_empty_responses, keys=options.keys)
        return source_items(inner, limit, uf_options)
    path = Path(spec)
    if spec == "-" or path.is_file():
        return records_with_errors(spec, limit=limit, options=options)
    if path.is_dir():
        files = _folder_files(path)
        items = itertools.chain.from_iterable(records_with_errors(f, options=options) for f in files)
        return itertools.islice(items, limit) if limit is not None else items
    hub = _hub_id(spec)
    if hub is None:
        return records_with_errors(spec, limit=limit, options=options)  # the usual "no such file" / suffix error
    return rows_with_errors(_hub_rows(spec, *hub), spec, limit=limit, options=options)


__all__ = [
    "parse_cyclic_spec",
    "parse_mixture",
    "parse_ultrafeedback_spec",
    "read_source",
    "source_items",
    "source_rows",
]
