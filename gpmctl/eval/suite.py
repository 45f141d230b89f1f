"""`gpmctl eval suite`: several benchmarks on one model in one run, each distinct response embedded once.

    suite = resolve_suite("local", data_root="data")             # or a YAML file: {benchmark: data, ...}
    summary = run_suite(suite, scorer, model, out_dir, strict)    # out_dir/<benchmark>.json, _examples.jsonl, summary.json

A suite maps benchmark names to their data (a file, folder, hub id or generated source). Every benchmark's data
is read and checked first; one whose data is missing or unreadable is skipped with one line (an error with
`strict`). Then the model embeds each benchmark's responses through one `Scorer` whose cache keeps every
sequence it has embedded, so benchmarks that share responses (RewardBench and RM-Bench both hold AlpacaEval
answers, for instance) pay for them once. Each benchmark's results JSON is what `gpmctl eval <benchmark> -o`
writes; the summary holds each one's headline number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpmctl.errors import ConfigError, GpmctlError
from gpmctl.utils import atomic_write_text, json_text, log


@dataclass
class Benchmark:
    load: Callable  # data -> rows (read and checked, no model)
    run: Callable  # (scorer, model, data, rows) -> (results JSON, per-example records)
    headline: Callable  # results JSON -> the number a table reports (a fraction)
    metric: str


def _rewardbench() -> Benchmark:
    from gpmctl.eval import benchmarks as b

    return Benchmark(
        load=lambda data: b.rewardbench_rows(data, "filtered"),
        run=lambda scorer, model, data, rows: b.rewardbench(scorer, model, rows, data),
        headline=lambda result: result["score"],
        metric="score (mean of the four sections)",
    )


def _rewardbench2() -> Benchmark:
    from gpmctl.eval import benchmarks as b
    from gpmctl.eval import rewardbench2 as rb2

    def run(scorer, model, data, rows):
        per_example = rb2.score_examples(scorer, rows)
        result = rb2.aggregate(per_example)
        settings = b.scorer_settings(scorer, model, scorer.encoder.max_length, data=data)
        return {**result, "gpmctl": settings | {"truncated_examples": b.truncation_report(per_example, "subset")}}, per_example

    return Benchmark(
        load=lambda data: rb2.load_rows(data), run=run, headline=lambda r: r["score"], metric="score (mean of six subsets)"
    )


def _rmbench() -> Benchmark:
    from gpmctl.eval import benchmarks as b

    return Benchmark(
        load=lambda data: b.rmbench_tables(data if isinstance(data, list) else [data]),
        run=lambda scorer, model, data, tables: b.rmbench(scorer, model, tables),
        headline=lambda result: result["overall"],
        metric="overall (mean of the domains)",
    )


def _pairs(cyclic: bool) -> Benchmark:
    from gpmctl.data.sources import read_source
    from gpmctl.errors import DataError
    from gpmctl.eval import benchmarks as b
    from gpmctl.eval import pairs as ev
    from gpmctl.eval.metrics import pair_report

    def load(data):
        records = list(read_source(data))
        if not records:
            raise DataError(data, "holds no preference pairs")
        return records

    def run(scorer, model, data, records):
        per_example = ev.score_records(scorer, records)
        report = pair_report(per_example, ev.GROUP_KEYS)
        if cyclic:
            report.update(ev.cyclic_report(per_example, per_example))
        settings = b.scorer_settings(scorer, model, scorer.encoder.max_length, data=data)
        settings["truncated_examples"] = b.truncation_report(per_example, "subset")
        return {"data": data, **report, "gpmctl": settings}, per_example

    return Benchmark(load=load, run=run, headline=lambda r: r["accuracy"], metric="pair accuracy")


def _judgebench() -> Benchmark:
    from gpmctl.eval import benchmarks as b
    from gpmctl.eval import judgebench as jb

    return Benchmark(
        load=lambda data: jb.data_tables(data),
        run=lambda scorer, model, data, tables: b.judgebench(scorer, model, tables, data),
        headline=lambda result: next(iter(result["files"].values()))["overall"]["accuracy"],
        metric="overall accuracy (first file)",
    )


def _rmb() -> Benchmark:
    from gpmctl.eval import benchmarks as b

    return Benchmark(
        load=lambda data: b.rmb_rows(data),
        run=lambda scorer, model, data, rows: b.rmb_benchmark(scorer, model, rows, data),
        headline=lambda result: result["overall"],
        metric="overall (mean of the four)",
    )


BENCHMARKS: dict[str, Callable[[], Benchmark]] = {
    "rewardbench": _rewardbench,
    "rewardbench2": _rewardbench2,
    "rmbench": _rmbench,
    "judgebench": _judgebench,
    "rmb": _rmb,
    "pairs": lambda: _pairs(cyclic=False),
    "cyclic": lambda: _pairs(cyclic=True),
}
"""Benchmark name -> how to load, run and summarise it (the library side of `gpmctl eval <name>`)."""

CYCLIC = "cyclic:reworded?blend_prompts=100&tournament_prompts=10"
JUDGEBENCH_GPT4O = "@judgebench/data/dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"
SUITES: dict[str, dict[str, str]] = {
    "rm": {
        "rewardbench": "allenai/reward-bench",
        "rewardbench2": "allenai/reward-bench-2",
        "rmbench": "@rm-bench",
        "judgebench": "ScalerLab/JudgeBench",
    },
    "local": {"cyclic": CYCLIC, "rmbench": "@rm-bench", "judgebench": JUDGEBENCH_GPT4O},
}
"""Shipped suites. `rm`: the reward-model benchmarks of the field; `local`: what needs no hub (generated data, and the
benchmarks found under --data-root). `@x` is a folder under --data-root (the layout of gpmctl's shared data)."""


def resolve_suite(name_or_file: str, data_root: str | Path | None = None) -> dict[str, str | list]:
    """A shipped suite's name or a YAML file {benchmark: data} -> {benchmark: data}, `@` paths under `data_root`."""
    if name_or_file in SUITES:
        suite = dict(SUITES[name_or_file])
    else:
        import yaml

        path = Path(name_or_file)
        if not path.is_file():
            raise ConfigError(f"--suite {name_or_file}: neither a shipped suite ({', '.join(SUITES)}) nor a YAML file")
        try:
            suite = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(suite, dict) or not suite:
            raise ConfigError(f"{path}: expected a mapping of benchmark name -> data (file, folder, hub id)")
    for name, data in suite.items():
        if name not in BENCHMARKS:
            raise ConfigError(f"{name_or_file}: {name}: unknown benchmark; known: {', '.join(BENCHMARKS)}")
        if not (isinstance(data, str) or (isinstance(data, list) and all(isinstance(d, str) for d in data))):
            raise ConfigError(f"{name_or_file}: {name}: expected a data path, hub id or list of paths, got {data!r}")
    root = Path(data_root) if data_root is not None else Path(".")
    return {
        name: str(root / data[1:]) if isinstance(data, str) and data.startswith("@") else data for name, data in suite.items()
    }


def load_suite(suite: dict, strict: bool) -> dict[str, tuple[Benchmark, object]]:
    """Each benchmark with its rows, data read and checked before any model is loaded; missing data: skipped
    with one line, or the error with `strict`."""
    loaded = {}
    for name, data in suite.items():
        benchmark = BENCHMARKS[name]()
        try:
            loaded[name] = (benchmark, benchmark.load(data))
        except GpmctlError as e:
            if strict:
                raise
            log(f"suite: {name} skipped: {e}")
    if not loaded:
        raise ConfigError("suite: no benchmark has its data here (see the lines above); nothing to run")
    return loaded


def run_suite(loaded: dict, suite: dict, scorer, model: str, out_dir: str | Path) -> dict:
    """Run the loaded benchmarks with one cached scorer; write out_dir/<name>.json, <name>_examples.jsonl and
    summary.json; return the summary {benchmark: {metric, value, data, ...}}."""
    import time

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scorer.cache = {} if scorer.cache is None else scorer.cache
    summary = {}
    for name, (benchmark, rows) in loaded.items():
        started, cached = time.perf_counter(), len(scorer.cache)
        scorer.encoder.truncated = scorer.encoder.encoded = 0  # each result counts its own sequences
        result, per_example = benchmark.run(scorer, model, suite[name], rows)
        atomic_write_text(out_dir / f"{name}.json", json_text(result, indent=4) + "\n")
        atomic_write_text(out_dir / f"{name}_examples.jsonl", "".join(json_text(e) + "\n" for e in per_example))
        summary[name] = {
            "metric": benchmark.metric,
            "value": benchmark.headline(result),
            "examples": len(per_example),
            "new_sequences": len(scorer.cache) - cached,
            "seconds": round(time.perf_counter() - started, 2),
            "data": suite[name],
        }
        log(f"suite: {name}: {100 * summary[name]['value']:.2f} ({summary[name]['new_sequences']} sequences embedded)")
    atomic_write_text(out_dir / "summary.json", json_text({"model": model, "benchmarks": summary}, indent=4) + "\n")
    return summary
