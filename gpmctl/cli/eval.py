"""`gpmctl eval ...`: RewardBench (official scoring), RM-Bench, JudgeBench, preference files and cyclic sets.

Data on stdout (the results JSON, unless --output), tables and progress on stderr. Every command takes
`--examples FILE` (per-example scores, jsonl) and `--scores FILE` (re-aggregate such a file: no model).
Scoring with a model takes `--num-processes N`: the rows are embedded in blocks dealt to N
processes (gpmctl.cli.processes), process 0 aggregates, writes and prints: the same files as one process.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from gpmctl.cli import processes
from gpmctl.cli.factory import new_app

app = new_app(help="Evaluate reward models: RewardBench, RM-Bench, JudgeBench, RMB, any preference file, cyclic sets.")

MODEL_HELP = "A model: a gpmctl folder (train-rm, export), a transformers sequence-classifier or OpenRLHF reward model, a released GPM checkpoint, a hub id or package:NAME."
SCORES_HELP = "Aggregate this per-example file (written by --examples) instead of running a model."
DATA_HELP = "A local .parquet/.jsonl/.json copy of the split, or a Hugging Face id."


def _model_options():
    return dict(
        batch_size=typer.Option(32, help="Sequences per forward pass."),
        max_length=typer.Option(2048, help="Tokens per (prompt, response); longer ones are cut at the end."),
        dtype=typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
        device=typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
        share_prompt=typer.Option(
            "auto", help="auto, true, false: embed a prompt's responses as one packed row with the prompt once (causal decoders)."
        ),
        num_processes=processes.num_processes_option(),
        deterministic=typer.Option(
            False,
            "--deterministic",
            help="Bit-stable reruns on a GPU: deterministic kernels, TF32 off, the heads in fp32 (slower; same on CPU).",
        ),
    )


_O = _model_options()


def _check_args(model, scores, output, examples, inputs, batch_size, max_length, dtype, device, limit=None) -> None:
    """Every argument, before any data is read or anything written: a bad one is one ConfigError line."""
    from gpmctl.errors import ConfigError
    from gpmctl.utils import DTYPES, resolve_device

    if bool(model) == bool(scores):
        raise ConfigError("pass either --model (score the data) or --scores (aggregate saved per-example scores)")
    if model:
        for flag, value, least in (("--batch-size", batch_size, 1), ("--max-length", max_length, 8), ("--limit", limit, 1)):
            if value is not None and value < least:
                raise ConfigError(f"{flag}: must be >= {least}, got {value}")
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        resolve_device(device)
    _check_outputs(output, examples if model else None, [model, scores, *inputs])


def _check_outputs(output: Optional[str], examples: Optional[str], inputs: list) -> None:
    """--output and --examples must be files that can be written and are none of the inputs (the files
    named, and the files directly inside the folders named: a model's weights, an RM-Bench folder)."""
    from pathlib import Path

    from gpmctl.errors import ConfigError
    from gpmctl.utils import check_output_file

    taken = {}
    for item in filter(None, inputs):
        p = Path(item)
        taken.update((f.resolve(), f) for f in ([p] if p.is_file() else p.iterdir() if p.is_dir() else []) if f.is_file())
    if examples and not examples.endswith(".jsonl"):
        raise ConfigError(f"--examples {examples}: per-example scores are JSON lines; name the file *.jsonl")
    if output and examples and Path(output).resolve() == Path(examples).resolve():
        raise ConfigError(f"--examples {examples}: is the --output file too")
    for flag, value in (("--output", output), ("--examples", examples)):
        if not value or value == "-":
            continue
        target = Path(value)
        if target.resolve() in taken:
            raise ConfigError(f"{flag} {value}: is the input {taken[target.resolve()]}; write elsewhere")
        check_output_file(target, f"{flag} {value}")


def _emit(result: dict, output: Optional[str], sort_keys: bool = False) -> None:
    from gpmctl.utils import atomic_write_text, json_text, log

    text = json_text(result, indent=4, sort_keys=sort_keys) + "\n"
    if output and output != "-":
        atomic_write_text(output, text)
        log(f"wrote {output}")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _write_examples(path: Optional[str], examples: list[dict]) -> None:
    from gpmctl.eval.benchmarks import write_examples

    write_examples(path, examples)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _settings(scorer, model: str, max_length: int, engine=None, data=None) -> dict:
    from gpmctl.eval.benchmarks import scorer_settings

    return scorer_settings(scorer, model, max_length, engine, data)


# ----------------------------------------------------------------------------------------------------


@app.command("rewardbench")
def rewardbench(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option("allenai/reward-bench", help=DATA_HELP),
    split: str = typer.Option("filtered", help="Split of a Hugging Face id."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results JSON here instead of stdout."),
    examples: Optional[str] = typer.Option(None, help="Write per-example scores (jsonl: id, subset, score, p, correct)."),
    scores: Optional[str] = typer.Option(None, help=f"{SCORES_HELP} Also RewardBench's own per-example or per-subset files."),
    legacy_xstest: bool = typer.Option(False, help="rewardbench <= 0.1.2's swapped XSTest weights (as the GPM repo's prints)."),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
    num_processes: int = _O["num_processes"],
) -> None:
    """RewardBench v1 with the official scoring: 23 subsets, 4 sections, Score = mean of the sections.

    A pair is right when s(chosen > rejected) > 0 strictly (a tie is wrong). Subsets are
    num_correct / num_total; a section is the count-weighted mean of its subsets (math-prm weighted
    984, as the six code subsets together). Row counts are checked against the filtered split
    (2,985): a missing or partial subset is a warning on stderr and is scored over the rows present
    (sections then use the subsets present; `complete` is false in the JSON).

    Examples:
      gpmctl eval rewardbench -m runs/gpm --data reward-bench-filtered.parquet -o rb.json --examples rb.jsonl
      gpmctl eval rewardbench --scores rb.jsonl          # re-aggregate, no model
    """
    from gpmctl.eval import rewardbench as rb
    from gpmctl.utils import log

    _check_args(model, scores, output, examples, [data], batch_size, max_length, dtype, device)
    if scores:
        results, metrics = rb.read_scores(scores)
        agg = rb.aggregate_metrics(metrics, legacy_xstest) if metrics is not None else rb.aggregate(results, legacy_xstest)
        for w in agg["warnings"]:
            log(f"warning: {w}")
        name, model_type = (metrics or {}).get("model", scores), (metrics or {}).get("model_type", "scores file")
        result = rb.results_json(agg, name, model_type, (metrics or {}).get("chat_template", "n/a"))
    else:
        from gpmctl.eval import benchmarks

        rows = benchmarks.rewardbench_rows(data, split)
        options = (model, batch_size, max_length, dtype, device, share_prompt, deterministic)
        with processes.scoring(ctx, num_processes, *options) as (engine, scorer):
            result, per_example = benchmarks.rewardbench(scorer, model, rows, data, legacy_xstest, engine)
        if not engine.is_main:  # process 0 writes and prints
            return
        _write_examples(examples, per_example)
        agg = rb.aggregate(((e["subset"], e["correct"]) for e in per_example), legacy_xstest)
    _rewardbench_table(agg)
    _emit(result, output, sort_keys=True)


def _rewardbench_table(agg: dict) -> None:
    from rich.table import Table

    from gpmctl.eval.rewardbench import SUBSET_MAPPING
    from gpmctl.utils import stderr_console

    table = Table(title="RewardBench", title_justify="left")
    for col, justify in (("section / subset", "left"), ("correct", "right"), ("accuracy %", "right")):
        table.add_column(col, justify=justify)
    counts = agg.get("counts") or {}
    for section, subsets in SUBSET_MAPPING.items():
        for s in subsets:
            if s in agg["subsets"]:
                c = f"{counts[s][0]:g}/{counts[s][1]}" if s in counts else ""
                table.add_row(f"  {s}", c, _pct(agg["subsets"][s]))
        table.add_row(f"[bold]{section}[/bold]", "", f"[bold]{_pct(agg['sections'][section])}[/bold]", end_section=True)
    table.add_row("[bold]Score[/bold] (mean of sections)", "", f"[bold]{_pct(agg['score'])}[/bold]")
    if agg.get("accuracy") is not None:
        table.add_row("pair accuracy (unweighted)", str(agg["num_pairs"]), _pct(agg["accuracy"]))
    stderr_console().print(table)


# ----------------------------------------------------------------------------------------------------


@app.command("pairs")
def pairs(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(
        None, help="Any preference file or source train-rm reads (jsonl, parquet, cyclic:reworded)."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results JSON here instead of stdout."),
    examples: Optional[str] = typer.Option(None, help="Write per-example scores (jsonl: id, subset, meta, score, p, correct)."),
    scores: Optional[str] = typer.Option(None, help=SCORES_HELP),
    limit: Optional[int] = typer.Option(None, help="Only the first N rows."),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
    num_processes: int = _O["num_processes"],
) -> None:
    """Accuracy, mean P(chosen > rejected), expected calibration error and a 10-bin reliability table.

    Broken down by `subset` and by the meta key `kind` when the data has them. Calibration counts each
    pair in both orders, (P, y) and (1 - P, 1 - y), with y the soft label when the data has one.

    Example: gpmctl eval pairs --data test.jsonl -m runs/gpm --examples per_pair.jsonl
    """
    from gpmctl.eval import pairs as ev
    from gpmctl.eval.metrics import pair_report

    _check_args(model, scores, output, examples, [data], batch_size, max_length, dtype, device, limit)
    options = (model, batch_size, max_length, dtype, device, share_prompt, deterministic)
    scored = _pair_examples(ctx, data, scores, limit, num_processes, options)
    if scored is None:  # another process than 0: process 0 writes and prints
        return
    per_example, extra = scored
    if not scores:
        _write_examples(examples, per_example)
    report = pair_report(per_example, ev.GROUP_KEYS)
    _pairs_table(report, "pairs")
    _emit({"data": data or scores, **report, **({"gpmctl": extra} if extra else {})}, output)


def _pair_examples(ctx, data, scores, limit, num_processes, options: tuple):
    """(per-example records, settings) of --scores, or of the pairs of `data` scored by the model of `options`
    (model, batch_size, max_length, dtype, device, share_prompt, deterministic) on `num_processes` processes; None on the
    processes other than 0."""
    from gpmctl.errors import ConfigError, DataError
    from gpmctl.eval import pairs as ev
    from gpmctl.eval.benchmarks import score_blocks, truncation_report
    from gpmctl.utils import log

    if scores:
        return ev.read_scores(scores), None
    if not data:
        raise ConfigError("--data is required with --model")
    from gpmctl.data.sources import read_source

    records = list(read_source(data, limit=limit))
    if not records:
        raise DataError(data, "holds no preference pairs")
    with processes.scoring(ctx, num_processes, *options) as (engine, scorer):
        log(f"{len(records)} pairs, {2 * len(records)} sequences to embed")
        per_example = score_blocks(engine, records, lambda block, _: ev.score_records(scorer, block))
        extra = _settings(scorer, options[0], options[2], engine, data)
    extra["truncated_examples"] = truncation_report(per_example, "subset")
    return (per_example, extra) if engine.is_main else None


def _pairs_table(report: dict, title: str) -> None:
    from rich.table import Table

    from gpmctl.utils import stderr_console

    console = stderr_console()
    table = Table(title=title, title_justify="left")
    for col in ("group", "pairs", "accuracy %", "mean P %", "ECE"):
        table.add_column(col, justify="left" if col == "group" else "right")

    def row(name, m):
        ece = "-" if m.get("ece") is None else f"{m['ece']:.4f}"
        table.add_row(name, str(m["pairs"]), _pct(m.get("accuracy")), _pct(m.get("mean_prob")), ece)

    row("[bold]all[/bold]", report)
    for key in ("subset", "kind"):
        for value, m in report.get(f"by_{key}", {}).items():
            row(f"{key}={value}", m)
    console.print(table)
    rel = Table(title="reliability (both orders of each pair)", title_justify="left")
    for col in ("P bin", "count", "mean P", "observed"):
        rel.add_column(col, justify="right")
    for r in report.get("reliability", []):
        rel.add_row(
            f"[{r['bin'][0]:.1f}, {r['bin'][1]:.1f})",
            str(r["count"]),
            "-" if r["mean_p"] is None else f"{r['mean_p']:.3f}",
            "-" if r["observed"] is None else f"{r['observed']:.3f}",
        )
    console.print(rel)


# ----------------------------------------------------------------------------------------------------


@app.command("cyclic")
def cyclic(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option(
        "cyclic:reworded", help="cyclic:reworded|new_items|new_edges[?options] (the generator) or a file with meta `cycle`."
    ),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results JSON here instead of stdout."),
    examples: Optional[str] = typer.Option(None, help="Write per-example scores (jsonl)."),
    scores: Optional[str] = typer.Option(None, help=SCORES_HELP),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
    num_processes: int = _O["num_processes"],
) -> None:
    """Intransitive (cyclic) preferences: overall and per-cycle accuracy, and the BT ceiling.

    The BT ceiling is the best accuracy any scalar reward can reach on the same pairs (at most 2/3 on
    3-cycles); a GPM can exceed it. It needs rows naming their items (chosen_item, rejected_item).

    Example: gpmctl eval cyclic -m runs/cyclic_tiny_gpm --data 'cyclic:reworded?num_prompts=200'
    """
    from gpmctl.eval import pairs as ev
    from gpmctl.eval.metrics import pair_report

    _check_args(model, scores, output, examples, [data], batch_size, max_length, dtype, device)
    options = (model, batch_size, max_length, dtype, device, share_prompt, deterministic)
    scored = _pair_examples(ctx, None if scores else data, scores, None, num_processes, options)
    if scored is None:  # another process than 0: process 0 writes and prints
        return
    per_example, extra = scored
    if not scores:
        _write_examples(examples, per_example)
    ceiling_rows = per_example
    if not scores and data.startswith("cyclic:"):
        from gpmctl.data.sources import source_rows

        ceiling_rows = source_rows(data)
    report = pair_report(per_example, ev.GROUP_KEYS)
    report.update(ev.cyclic_report(per_example, ceiling_rows))
    _pairs_table({k: v for k, v in report.items() if k != "by_subset"}, "cyclic")
    from gpmctl.utils import log

    log(
        f"cycles: {report['cycles']}, all pairs right in {_pct(report['cycles_all_right'])}% of them; "
        f"BT ceiling {_pct(report.get('bt_ceiling'))}%, this model {_pct(report['accuracy'])}%"
    )
    _emit({"data": scores or data, **report, **({"gpmctl": extra} if extra else {})}, output)


# ----------------------------------------------------------------------------------------------------


@app.command("rmbench")
def rmbench(
    ctx: typer.Context,
    data: Optional[List[str]] = typer.Option(
        None, help="RM-Bench folder, *_filtered.json files or total_dataset.json (repeatable)."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results JSON here instead of stdout."),
    examples: Optional[str] = typer.Option(None, help="Write per-row 3x3 scores and matrices (jsonl)."),
    scores: Optional[str] = typer.Option(None, help=SCORES_HELP),
    limit: Optional[int] = typer.Option(None, help="Only the first N rows of each file (a quick check, not a benchmark number)."),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
    num_processes: int = _O["num_processes"],
) -> None:
    """RM-Bench: per row a 3x3 matrix chosen style x rejected style; hard / normal / easy per domain.

    hard = upper triangle (chosen plainer than rejected), normal = diagonal, easy = lower triangle of
    the domain's mean matrix; domain = mean of the three; each row's domain is its `domain` field
    (else its file's name), safety-refuse and safety-response being one domain; a folder with
    total_dataset.json is read as that file alone; overall = mean of the domains present (a domain
    without a file, e.g. math, is left out).

    Example: gpmctl eval rmbench -m runs/gpm --data rm-bench/data    (a folder of *_filtered.json files)
    """
    from gpmctl.errors import ConfigError
    from gpmctl.eval import rmbench as rm
    from gpmctl.utils import log

    _check_args(model, scores, output, examples, data or [], batch_size, max_length, dtype, device, limit)
    if scores:
        result = rm.aggregate(rm.read_scores(scores))
        if result["missing_domains"]:
            log(f"warning: domain(s) {', '.join(result['missing_domains'])} not in the data; overall is the mean of the others")
    else:
        if not data:
            raise ConfigError("--data is required with --model")
        from gpmctl.eval import benchmarks

        tables = benchmarks.rmbench_tables(data, limit)
        options = (model, batch_size, max_length, dtype, device, share_prompt, deterministic)
        with processes.scoring(ctx, num_processes, *options) as (engine, scorer):
            result, per_example = benchmarks.rmbench(scorer, model, tables, engine)
        if not engine.is_main:  # process 0 writes and prints
            return
        _write_examples(examples, per_example)
    _rmbench_table(result)
    _emit(result, output)


def _rmbench_table(result: dict) -> None:
    from rich.table import Table

    from gpmctl.utils import stderr_console

    table = Table(title="RM-Bench", title_justify="left")
    for col in ("domain", "rows", "hard %", "normal %", "easy %", "average %"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for name, d in result["domains"].items():
        table.add_row(name, str(d["rows"]), _pct(d["hard"]), _pct(d["normal"]), _pct(d["easy"]), _pct(d["average"]))
    if result["domains"]:
        overall = f"[bold]{_pct(result['overall'])}[/bold]"
        table.add_row("[bold]overall[/bold]", "", _pct(result["hard"]), _pct(result["normal"]), _pct(result["easy"]), overall)
    stderr_console().print(table)


# ----------------------------------------------------------------------------------------------------


@app.command("rewardbench2")
def rewardbench2(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option("allenai/reward-bench-2", help=DATA_HELP),
    split: str = typer.Option("test", help="Split of a Hugging Face id."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results JSON here instead of stdout."),
    examples: Optional[str] = typer.Option(None, help="Write per-prompt K x K scores (jsonl)."),
    scores: Optional[str] = typer.Option(None, help=SCORES_HELP),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
    num_processes: int = _O["num_processes"],
) -> None:
    """RewardBench 2: best-of-4 accuracy (shared credit at ties), the Ties composite, mean of six subsets.

    A GPM has no pointwise reward: a prompt counts as right when no other completion beats the first
    chosen one, s(chosen > other) >= 0, with credit shared among those tied with it (for BT exactly the
    official rule). The Ties subset ranks completions by their summed score against the others over K
    (for BT exactly r_i - mean(r), so the composite is the official one).

    Example: gpmctl eval rewardbench2 -m runs/gpm --data reward-bench-2-test.parquet -o rb2.json
    """
    from gpmctl.eval import rewardbench2 as rb2
    from gpmctl.utils import log

    _check_args(model, scores, output, examples, [data], batch_size, max_length, dtype, device)
    extra = None
    if scores:
        per_example = rb2.read_scores(scores)
    else:
        from gpmctl.eval.benchmarks import score_blocks, truncation_report

        rows = rb2.load_rows(data, split)
        options = (model, batch_size, max_length, dtype, device, share_prompt, deterministic)
        with processes.scoring(ctx, num_processes, *options) as (engine, scorer):
            log(
                f"rewardbench2: {len(rows)} prompts, {sum(len(r['chosen']) + len(r['rejected']) for r in rows)} sequences to embed"
            )
            per_example = score_blocks(engine, rows, lambda block, first: rb2.score_examples(scorer, block, first))
            extra = _settings(scorer, model, max_length, engine, data) | {
                "truncated_examples": truncation_report(per_example, "subset")
            }
        if not engine.is_main:  # process 0 writes and prints
            return
        _write_examples(examples, per_example)
    result = rb2.aggregate(per_example)
    for w in result["warnings"]:
        log(f"warning: {w}")
    from rich.table import Table

    from gpmctl.utils import stderr_console

    table = Table(title="RewardBench 2", title_justify="left")
    for col in ("subset", "prompts", "score %"):
        table.add_column(col, justify="left" if col == "subset" else "right")
    for name, value in result["subsets"].items():
        table.add_row(name, str(result["counts"][name]), _pct(value))
    table.add_row("[bold]Score[/bold] (mean of 6)", "", f"[bold]{_pct(result['score'])}[/bold]")
    stderr_console().print(table)
    _emit({**result, "model": model or scores, **({"gpmctl": extra} if extra else {})}, output)


# ----------------------------------------------------------------------------------------------------


@app.command("judgebench")
def judgebench(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    data: str = typer.Option(
        "ScalerLab/JudgeBench",
        help="A JudgeBench .jsonl file, a folder (each *.jsonl in it, reported alone) or a Hugging Face id.",
    ),
    split: str = typer.Option("gpt", help="Split of a Hugging Face id: gpt (the GPT-4o file, 350 pairs) or claude (270)."),
    both_orders: bool = typer.Option(
        False, help="Judge each pair as (A, B) and (B, A), +1 / -1 per order (for order-sensitive scorers); default: single game."
    ),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results JSON here instead of stdout."),
    examples: Optional[str] = typer.Option(
        None, help="Write per-pair scores (jsonl: pair_id, source, label, score, decision, ...)."
    ),
    scores: Optional[str] = typer.Option(None, help=SCORES_HELP),
    limit: Optional[int] = typer.Option(None, help="Only the first N rows of each file (a quick check, not a benchmark number)."),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
    num_processes: int = _O["num_processes"],
) -> None:
    """JudgeBench with the official reward-model rule: Knowledge, Reasoning, Math, Coding and Overall, per file.

    Single game (the official rule for reward models): the decision is A>B iff s(A > B) > 0 strictly, else
    B>A (so an exact tie counts as B>A); a pair is right iff the decision is its label. --both-orders also
    judges (B, A), flipped back: +1 per decision equal to the label, -1 otherwise, right iff the sum > 0.
    Score = 100 x right / pairs per category (by `source` prefix) and Overall pooled over the file's pairs.

    Examples:
      gpmctl eval judgebench -m runs/gpm --data judgebench/data -o jb.json --examples jb.jsonl
      gpmctl eval judgebench --scores jb.jsonl --both-orders     # re-aggregate, no model
    """
    from gpmctl.eval import judgebench as jb
    from gpmctl.utils import log

    _check_args(model, scores, output, examples, [data], batch_size, max_length, dtype, device, limit)
    if scores:
        result = {"data": scores, **jb.aggregate(jb.read_scores(scores, both_orders), both_orders)}
    else:
        from gpmctl.eval import benchmarks

        tables = jb.data_tables(data, split, limit)
        options = (model, batch_size, max_length, dtype, device, share_prompt, deterministic)
        with processes.scoring(ctx, num_processes, *options) as (engine, scorer):
            result, per_example = benchmarks.judgebench(scorer, model, tables, data, both_orders, engine)
        if not engine.is_main:  # process 0 writes and prints
            return
        _write_examples(examples, per_example)
    log(f"judgebench rule: {result['rule']}")
    _judgebench_table(result)
    _emit(result, output)


def _judgebench_table(result: dict) -> None:
    from rich.table import Table

    from gpmctl.utils import stderr_console

    for name, f in result["files"].items():
        table = Table(title=f"JudgeBench {name} ({f['response_model']})", title_justify="left")
        for col in ("category", "pairs", "correct", "score"):
            table.add_column(col, justify="left" if col == "category" else "right")
        for cat, c in [*f["categories"].items(), ("[bold]Overall[/bold]", f["overall"])]:
            table.add_row(cat, str(c["pairs"]), str(c["correct"]), f"{c['score']:.2f}")
        stderr_console().print(table)


# ----------------------------------------------------------------------------------------------------


@app.command("rmb")
def rmb(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, help="Your copy of RMB_dataset/ (with Pairwise_set/ and BoN_set/); not shipped."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results JSON here instead of stdout."),
    examples: Optional[str] = typer.Option(None, help="Write per-row scores (jsonl: set, goal, scenario, uid, scores, correct)."),
    scores: Optional[str] = typer.Option(None, help=SCORES_HELP),
    limit: Optional[int] = typer.Option(None, help="Only the first N rows of each scenario file (a quick check)."),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
    num_processes: int = _O["num_processes"],
) -> None:
    """RMB: Pairwise and BoN accuracy for Helpfulness and Harmlessness, overall = the mean of the four.

    Pairwise: right iff s(chosen > reject) > 0 strictly. Best-of-N: right iff s(bon_best > loser) > 0 for
    every loser (each row's candidates embedded once, as one group). Each number is pooled over every row of
    its set and goal (micro, as RM-R1); per-scenario accuracies (file stem) are in the JSON. A part of the
    layout that is missing (say, only Pairwise_set/) is a warning; the numbers it holds are still computed.

    Example: gpmctl eval rmb -m runs/gpm --data RMB-Reward-Model-Benchmark/RMB_dataset -o rmb.json
    """
    from gpmctl.errors import ConfigError
    from gpmctl.eval import rmb as ev
    from gpmctl.utils import log

    _check_args(model, scores, output, examples, [data], batch_size, max_length, dtype, device, limit)
    if scores:
        result = {"data": scores, **ev.aggregate(ev.read_scores(scores))}
    else:
        if not data:
            raise ConfigError("--data is required with --model (RMB is not shipped: pass your copy of RMB_dataset/)")
        from gpmctl.eval import benchmarks

        rows = benchmarks.rmb_rows(data, limit)
        options = (model, batch_size, max_length, dtype, device, share_prompt, deterministic)
        with processes.scoring(ctx, num_processes, *options) as (engine, scorer):
            result, per_example = benchmarks.rmb_benchmark(scorer, model, rows, data, engine)
        if not engine.is_main:  # process 0 writes and prints
            return
        _write_examples(examples, per_example)
    for w in result["warnings"]:
        log(f"warning: {w}")
    from rich.table import Table

    from gpmctl.utils import stderr_console

    table = Table(title="RMB", title_justify="left")
    for col in ("number", "rows", "accuracy %"):
        table.add_column(col, justify="left" if col == "number" else "right")
    for name in ev.NUMBERS:
        table.add_row(name, str(result["counts"].get(name, {}).get("rows", 0)), _pct(result[name]))
    table.add_row("[bold]overall[/bold] (mean of 4)", "", f"[bold]{_pct(result['overall'])}[/bold]")
    stderr_console().print(table)
    _emit(result, output)


# ----------------------------------------------------------------------------------------------------


@app.command("suite")
def suite(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    suite_name: str = typer.Option("local", "--suite", help="A shipped suite (rm, local) or a YAML file {benchmark: data}."),
    data_root: Optional[str] = typer.Option(
        None, help="Where a shipped suite's local data sets are (@rm-bench -> DATA_ROOT/rm-bench); default $GPMCTL_DATA or ."
    ),
    out: str = typer.Option("eval_suite", help="Folder for <benchmark>.json, <benchmark>_examples.jsonl and summary.json."),
    strict: bool = typer.Option(False, "--strict", help="A benchmark whose data is missing is an error (default: skipped)."),
    batch_size: int = _O["batch_size"],
    max_length: int = _O["max_length"],
    dtype: str = _O["dtype"],
    device: str = _O["device"],
    share_prompt: str = _O["share_prompt"],
    deterministic: bool = _O["deterministic"],
) -> None:
    """Several benchmarks in one run: each distinct response embedded once, one results folder, one summary
    (a table on stderr, JSON on stdout). Suites: `rm` (RewardBench, RewardBench 2, RM-Bench, JudgeBench), `local`
    (what needs no hub: the cyclic set, and RM-Bench and JudgeBench if DATA_ROOT/rm-bench and DATA_ROOT/judgebench are
    there, gpmctl's shared-data layout), or your YAML file, e.g.
    `{rmbench: data/rm-bench, pairs: test.jsonl, rewardbench: allenai/reward-bench}`. Each benchmark's JSON is
    what `gpmctl eval <benchmark> -o` writes, provenance included.

    Example: gpmctl eval suite -m runs/gpm --suite local --data-root data --out runs/gpm/eval_suite
    """
    import os

    from rich.table import Table

    from gpmctl.eval import suite as s
    from gpmctl.models.embed import load_scorer
    from gpmctl.utils import json_text, stderr_console

    _check_args(model, None, None, None, [], batch_size, max_length, dtype, device)
    wanted = s.resolve_suite(suite_name, data_root or os.environ.get("GPMCTL_DATA"))
    loaded = s.load_suite(wanted, strict)
    scorer = load_scorer(model, batch_size, max_length, dtype, device, share_prompt, deterministic)
    summary = s.run_suite(loaded, wanted, scorer, model, out)
    table = Table(title=f"suite {suite_name}: {model}", title_justify="left")
    for col in ("benchmark", "metric", "value %", "examples", "new sequences", "seconds"):
        table.add_column(col, justify="left" if col in ("benchmark", "metric") else "right")
    for name, row in summary.items():
        table.add_row(
            name, row["metric"], _pct(row["value"]), str(row["examples"]), str(row["new_sequences"]), str(row["seconds"])
        )
    stderr_console().print(table)
    sys.stdout.write(json_text({"model": model, "out": out, "benchmarks": summary}, indent=4) + "\n")
