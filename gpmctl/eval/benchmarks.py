"""Benchmarks on a model folder as library calls, shared by `gpmctl eval ...` and the `evaluate:` section
of a train-rm recipe (run on the saved model when training ends, so one command gives one table row).

The data is read (and checked) before the model is loaded, so a bad file fails in a second. Each
benchmark function scores with a loaded `Scorer` and returns (results JSON, per-example records); the
results JSON is exactly what `gpmctl eval <benchmark> -o FILE` writes. Rows are embedded in blocks of
ROWS_PER_BLOCK (`score_blocks`), dealt over the processes of an `Engine` (`gpmctl eval ... --num-processes N`):
every process gets all per-example records in row order, the same numbers one process computes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from gpmctl.engine import Engine
from gpmctl.errors import DataError
from gpmctl.eval import judgebench as jb
from gpmctl.eval import rewardbench as rb
from gpmctl.eval import rmb
from gpmctl.eval import rmbench as rm
from gpmctl.models.embed import Scorer
from gpmctl.utils import atomic_write_text, json_text, log

TRUNCATION_WARNING = 0.01
"""Share of sequences cut at max_length above which an evaluation warns (its numbers are then not full-length ones)."""
ROWS_PER_BLOCK = 64
"""Rows embedded together (their sequences sorted by length into batches): the unit dealt to a process. Fixed, so
that any number of processes batches every row with the same neighbours and gets the same bits."""


def score_blocks(engine: Engine | None, rows: list, score) -> list:
    """score(block of rows, index of its first row) -> one record per row, on blocks of ROWS_PER_BLOCK rows dealt
    over the engine's processes (None: this process alone); all records in row order on every process."""
    engine = engine or Engine.local()
    return engine.shard_map(rows, lambda block, b: score(block, b * ROWS_PER_BLOCK), ROWS_PER_BLOCK)


def scorer_settings(scorer: Scorer, model: str, max_length: int, engine: Engine | None = None, data=None) -> dict:
    """The settings that move scores, and their provenance (gpmctl.eval.provenance), saved with the results (called
    once scoring is done, on every process of `engine`: the sequences and the truncated ones are counted over them).
    More than TRUNCATION_WARNING of the sequences cut is a warning on stderr."""
    from gpmctl.eval.provenance import provenance

    engine = engine or Engine.local()
    truncated, sequences = engine.total(scorer.encoder.truncated), engine.total(scorer.encoder.encoded)
    if truncated:
        share = truncated / max(sequences, 1)
        loud = share > TRUNCATION_WARNING
        log(
            f"{'warning: ' if loud else ''}{truncated} of {sequences} sequences ({100 * share:.1f}%) were longer than "
            f"max_length {max_length} and cut at the end{'; raise --max-length to compare with full-length results' if loud else ''}"
        )
    head = scorer.model.head
    settings = {
        "model_path": model,
        "kind": head.kind,
        "dim": head.dim,
        "gate": head.gate,
        "tau": head.tau,
        "eos": head.eos,
        "pad_token_id": scorer.encoder.pad_id,
        "max_length": max_length,
        "truncation": "right",
        "padding": "none (packed rows, each prompt once)" if scorer.share_prompt else "left",
        "batch_size": scorer.batch_size,
        "dtype": str(next(scorer.model.parameters()).dtype).replace("torch.", ""),
        "device": str(scorer.device),
        "deterministic": scorer.deterministic,
        "sequences": sequences,
        "truncated_sequences": truncated,
    }
    if data is not None:
        settings["data"] = data
    return settings | {"provenance": provenance(scorer, data) | {"processes": engine.world}}


def truncation_report(examples: list[dict], key: str) -> dict:
    """How many examples had a sequence cut at max_length (their `truncated` field), in all and per `key` (subset,
    domain, category, scenario): a benchmark number with many cut examples is not a full-length one."""
    groups: dict[str, list[int]] = {}
    for e in examples:
        groups.setdefault(str(e.get(key, "all")), []).append(1 if e.get("truncated") else 0)
    cut = sum(sum(v) for v in groups.values())
    return {
        "examples": len(examples),
        "examples_cut": cut,
        "share_cut": cut / len(examples) if examples else 0.0,
        f"by_{key}": {g: {"examples": len(v), "cut": sum(v)} for g, v in groups.items() if sum(v)},
    }


def rewardbench_rows(data: str, split: str) -> list[dict]:
    """RewardBench v1 rows (prompt, chosen and rejected strings, subset), checked against the filtered split."""
    rows = rb.load_rows(data, split)
    for number, row in enumerate(rows, start=1):
        for key in ("prompt", "chosen", "rejected", "subset"):
            if not isinstance(row[key], str):
                raise DataError(data, f"expected a string, got {type(row[key]).__name__} (row {number})", line=number, field=key)
    warnings, _ = rb.check_counts(Counter(r["subset"] for r in rows))
    for w in warnings:
        log(f"warning: {w}")
    return rows


def rewardbench(
    scorer: Scorer, model: str, rows: list[dict], data: str, legacy_xstest: bool = False, engine: Engine | None = None
) -> tuple[dict, list[dict]]:
    """RewardBench v1 with the official scoring (gpmctl.eval.rewardbench) on `rewardbench_rows(data, ...)`."""
    log(f"rewardbench: {len(rows)} pairs, {2 * len(rows)} sequences to embed")
    per_example = score_blocks(engine, rows, lambda block, _: rb.score_examples(scorer, block))
    agg = rb.aggregate(((e["subset"], e["correct"]) for e in per_example), legacy_xstest)
    settings = scorer_settings(scorer, model, scorer.encoder.max_length, engine, data) | {"legacy_xstest_weights": legacy_xstest}
    model_type = "Seq. Classifier" if scorer.kind == "bt" else "Custom Classifier"
    chat_template = "tokenizer" if scorer.encoder.tokenizer.chat_template else "raw"
    settings["truncated_examples"] = truncation_report(per_example, "subset")
    return rb.results_json(agg, model, model_type, chat_template, settings), per_example


def rmbench_tables(data: list[str], limit: int | None = None) -> list[tuple[Path, list[dict]]]:
    """(file, rows) of each RM-Bench file; `limit`: only the first N rows of each."""
    tables = [(f, rm.read_rows(f)[:limit]) for f in rm.data_files(data)]
    for f, rows in tables:
        if not rows:
            raise DataError(str(f), "holds no rows")
    return tables


def rmbench(
    scorer: Scorer, model: str, tables: list[tuple[Path, list[dict]]], engine: Engine | None = None
) -> tuple[dict, list[dict]]:
    """RM-Bench hard / normal / easy per domain (gpmctl.eval.rmbench) on `rmbench_tables(...)`."""
    per_example = []
    for f, rows in tables:
        log(f"rmbench {f.name}: {len(rows)} rows, {6 * len(rows)} sequences to embed")
        per_example += score_blocks(engine, rows, lambda block, first: rm.score_examples(scorer, f, block, first))
    result = rm.aggregate(per_example)
    if result["missing_domains"]:
        log(f"warning: domain(s) {', '.join(result['missing_domains'])} not in the data; overall is the mean of the others")
    settings = scorer_settings(scorer, model, scorer.encoder.max_length, engine, [str(f) for f, _ in tables]) | {
        "rows": {f.name: len(rows) for f, rows in tables},
        "truncated_examples": truncation_report(per_example, "domain"),
    }
    return {**result, "gpmctl": settings}, per_example


def judgebench(
    scorer: Scorer,
    model: str,
    tables: list[tuple[str, list[dict]]],
    data: str,
    both_orders: bool = False,
    engine: Engine | None = None,
) -> tuple[dict, list[dict]]:
    """JudgeBench by the official reward-model rule (gpmctl.eval.judgebench) on `jb.data_tables(data, ...)`, each
    file reported alone."""
    per_example = []
    for name, rows in tables:
        log(f"judgebench {name}: {len(rows)} pairs, {2 * len(rows)} sequences to embed")
        per_example += score_blocks(engine, rows, lambda block, _: jb.score_examples(scorer, name, block, both_orders))
    settings = scorer_settings(scorer, model, scorer.encoder.max_length, engine, data) | {
        "rows": {name: len(rows) for name, rows in tables},
        "truncated_examples": truncation_report(per_example, "category"),
    }
    return {"data": data, **jb.aggregate(per_example, both_orders), "gpmctl": settings}, per_example


def rmb_rows(data: str, limit: int | None = None) -> list[dict]:
    """Every row of an RMB folder (`limit`: the first N of each scenario file); a missing part is a warning."""
    rows, warnings = rmb.load_rows(data, limit)
    for w in warnings:
        log(f"warning: {w}")
    return rows


def rmb_benchmark(
    scorer: Scorer, model: str, rows: list[dict], data: str, engine: Engine | None = None
) -> tuple[dict, list[dict]]:
    """RMB's four numbers and overall (gpmctl.eval.rmb) on `rmb_rows(data, ...)`."""
    log(f"rmb: {len(rows)} rows, {sum(len(r['responses']) for r in rows)} sequences to embed")
    per_example = score_blocks(engine, rows, lambda block, _: rmb.score_examples(scorer, block))
    settings = scorer_settings(scorer, model, scorer.encoder.max_length, engine, data)
    settings["truncated_examples"] = truncation_report(per_example, "scenario")
    return {"data": data, **rmb.aggregate(per_example), "gpmctl": settings}, per_example


def write_examples(path: str | Path | None, examples: list[dict]) -> None:
    if path:
        atomic_write_text(path, "".join(json_text(e) + "\n" for e in examples))
        log(f"wrote {len(examples)} per-example scores to {path}")


def after_training(recipe, model_dir: str | Path) -> dict:
    """Run the recipe's `evaluate:` benchmarks on the saved model; write eval/<name>.json (+ per-example
    jsonl) in the run folder and add {"benchmarks": {name: headline}} to its metrics.json."""
    from gpmctl.models.embed import load_scorer

    e = recipe.evaluate
    wanted = {name: source for name, source in (("rewardbench", e.rewardbench), ("rmbench", e.rmbench)) if source}
    if not wanted:
        return {}
    model_dir = Path(model_dir)
    data = {
        "rewardbench": rewardbench_rows(e.rewardbench, e.rewardbench_split) if e.rewardbench else None,
        "rmbench": rmbench_tables([e.rmbench], e.rmbench_limit) if e.rmbench else None,
    }
    scorer = load_scorer(str(model_dir), e.batch_size, e.max_length or recipe.data.max_length, "auto", "auto")
    headlines = {}
    for name, source in wanted.items():
        if name == "rewardbench":
            result, examples = rewardbench(scorer, str(model_dir), data[name], source)
            headlines[name] = {"score": result["score"], "sections": result["sections"], "complete": result["complete"]}
        else:
            result, examples = rmbench(scorer, str(model_dir), data[name])
            headlines[name] = {k: result[k] for k in ("overall", "hard", "normal", "easy") if k in result}
        atomic_write_text(model_dir / "eval" / f"{name}.json", json_text(result, indent=4) + "\n")
        write_examples(model_dir / "eval" / f"{name}_examples.jsonl", examples)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in headlines[name].items() if isinstance(v, float))
        log(f"{name}: {shown} (eval/{name}.json)")
    metrics_path = model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["benchmarks"] = headlines
    atomic_write_text(metrics_path, json_text(metrics, indent=2))
    return headlines
