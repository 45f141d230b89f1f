"""`gpmctl data ...`: create and inspect preference datasets."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import List, Optional

import typer

from gpmctl.cli.factory import new_app

app = new_app(help="Read, validate, convert and synthesise preference datasets.")


@app.command("cyclic")
def cyclic(
    out_dir: str = typer.Argument(..., help="Folder for train.jsonl and the test sets (reworded.jsonl, ...)."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes byte-identical files."),
    num_prompts: int = typer.Option(200, help="Prompts, one cycle each."),
    num_items: int = typer.Option(12, help="Items on the preference circle (a cycle length must divide it)."),
    cycle_lengths: str = typer.Option("3", help="Comma-separated cycle lengths, e.g. 3 or 3,4,6."),
    train_renderings: int = typer.Option(4, help="Training pairs per comparison (fresh wording each)."),
    test_renderings: int = typer.Option(2, help="Held-out pairs per comparison, worded unlike any training text."),
    transitive_fraction: float = typer.Option(0.3, help="Share of prompts that also get a transitive triple (train only)."),
    blend_prompts: int = typer.Option(0, help="Extra prompts with cycles of two-word blends; > 0 writes new_items.jsonl."),
    tournament_prompts: int = typer.Option(0, help="Extra prompts with a 7-item tournament; > 0 writes new_edges.jsonl."),
    style: str = typer.Option(
        "word", help="Responses: word (the item's word alone) or sentence (the item in a random sentence)."
    ),
) -> None:
    """Write intransitive (cyclic) preference data: the paper's Table 1 experiment.

    Each prompt holds a cycle such as A > B > C > A. No scalar reward can get more than 2/3 of a
    3-cycle right; a GPM can get all of it. Test sets: reworded.jsonl (the training comparisons asked
    with new prompt wordings), new_items.jsonl (cycles of items no training row names) and
    new_edges.jsonl (tournament comparisons held out of training). Prints the paths and the best
    accuracy a BT model could reach on each test set, as JSON on stdout.

    Example: gpmctl data cyclic data/cyclic --seed 0 --blend-prompts 100 --tournament-prompts 10

    Example: gpmctl data cyclic data/cyclic-sentences --style sentence --blend-prompts 100 --tournament-prompts 10
    """
    from gpmctl.data.cyclic import CyclicConfig, best_scalar_accuracy, cyclic_splits, write_cyclic
    from gpmctl.errors import ConfigError

    try:
        lengths = tuple(int(x) for x in cycle_lengths.split(","))
    except ValueError:
        raise ConfigError(f"--cycle-lengths: expected comma-separated integers, got {cycle_lengths!r}") from None
    cfg = CyclicConfig(
        num_prompts=num_prompts,
        num_items=num_items,
        cycle_lengths=lengths,
        train_renderings=train_renderings,
        test_renderings=test_renderings,
        transitive_fraction=transitive_fraction,
        seed=seed,
        blend_prompts=blend_prompts,
        tournament_prompts=tournament_prompts,
        style=style,
    )
    paths = write_cyclic(out_dir, cfg)
    summary = {name: str(p) for name, p in paths.items()}
    for split, rows in cyclic_splits(cfg).items():
        if split != "train" and rows:
            summary[f"bt_ceiling_{split}"] = round(best_scalar_accuracy(rows), 4)
    print(json.dumps(summary))


MAX_SKIPPED_SHOWN = 100  # --skip-invalid prints this many skipped rows, then only counts them


@contextmanager
def _progress(label: str):
    """A row counter on stderr when stderr is a terminal; otherwise nothing (-> None)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from gpmctl.utils import stderr_console

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda rows: bar.update(task, completed=rows)


class _SkipReporter:
    """Prints skipped rows (the first MAX_SKIPPED_SHOWN) on stderr and counts them all."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, error) -> None:
        self.count += 1
        if self.count <= MAX_SKIPPED_SHOWN:
            print(f"skipped: {error}", file=sys.stderr)

    def summary(self) -> None:
        if self.count > MAX_SKIPPED_SHOWN:
            print(f"skipped: ... {self.count - MAX_SKIPPED_SHOWN:,} more rows not shown", file=sys.stderr)
        if self.count:
            print(f"skipped {self.count:,} invalid rows (see above)", file=sys.stderr)


SOURCE_HELP = (
    "what a recipe's data.train takes: a file (.jsonl, .jsonl.gz, .json, .csv, .parquet; - for stdin jsonl), a folder, "
    "a Hub id, a mixture a.jsonl:0.7,b.jsonl:0.3, cyclic:SPLIT or ultrafeedback:SOURCE"
)
SKIP_HELP = "Skip bad rows (each is reported on stderr and counted) instead of stopping with exit 2."
FORMAT_HELP = "Read every row with this reader (explicit, messages, hh-rlhf, implicit-text, gpm-custom, ultrafeedback) instead of detecting it per row."
ULTRAFEEDBACK_HELP = "UltraFeedback rows: binarize (best vs worst completion) or cyclic (the paper's cyclic triples)."
CRITERIA_HELP = "With --ultrafeedback cyclic: the aspect of each link, e.g. 'honesty>truthfulness>helpfulness'."
EMPTY_HELP = "Accept empty or whitespace-only answers (e.g. HH-RLHF's few preferred empty replies); otherwise each is a bad row."
KEY_HELP = "Input key that holds the {0} (renamed to {0}; a row without it has no {0})."


def _read_options(
    fmt: Optional[str] = None,
    ultrafeedback: str = "binarize",
    criteria: Optional[str] = None,
    allow_empty: bool = False,
    keys: tuple[Optional[str], Optional[str], Optional[str]] = (None, None, None),
):
    """The flags -> ReadOptions; `keys` are --prompt-key, --chosen-key, --rejected-key. A bad value is a
    one-line ConfigError (exit 2)."""
    from gpmctl.data.formats import ReadOptions, input_keys
    from gpmctl.data.ultrafeedback import DEFAULT_CYCLE_CRITERIA
    from gpmctl.errors import ConfigError

    try:
        return ReadOptions(
            format=fmt,
            ultrafeedback_mode=ultrafeedback,
            criteria=criteria or DEFAULT_CYCLE_CRITERIA,
            allow_empty_responses=allow_empty,
            keys=input_keys(*keys),
        )
    except ValueError as e:
        raise ConfigError(f"--format/--ultrafeedback/--criteria/--*-key: {e}") from None


@app.command("validate")
def validate(
    files: List[str] = typer.Argument(..., help=f"Sources ({SOURCE_HELP})."),
    fmt: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    ultrafeedback: str = typer.Option("binarize", help=ULTRAFEEDBACK_HELP),
    criteria: Optional[str] = typer.Option(None, help=CRITERIA_HELP),
    allow_empty_responses: bool = typer.Option(False, help=EMPTY_HELP),
    prompt_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("prompt")),
    chosen_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("chosen")),
    rejected_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("rejected")),
) -> None:
    """Check every row of every source in one pass; print each problem as `file:line: field: problem`.

    Problems go to stderr, one per line, then a summary line. The row format is detected per row
    (explicit, messages, hh-rlhf, implicit-text, gpm-custom, ultrafeedback) unless --format names one. Exit 0
    when every row is valid, 2 otherwise. Empty or whitespace-only texts are problems (answers too,
    unless --allow-empty-responses), and so is a file with no rows. The summary counts records (an
    UltraFeedback row may give several, or none).

    Example: gpmctl data validate data/train.jsonl data/test.jsonl.gz

    Example: gpmctl data validate data/folder 'hh.jsonl.gz:0.7,ultrafeedback:uf.jsonl:0.3' cyclic:train

    Example: gpmctl data validate raw.jsonl --format explicit

    Example: gpmctl data validate raw.jsonl --prompt-key question --chosen-key good --rejected-key bad
    """
    from gpmctl.data.ops import validate as validate_rows

    options = _read_options(fmt, ultrafeedback, criteria, allow_empty_responses, (prompt_key, chosen_key, rejected_key))
    rows = problems = 0
    with _progress("validating") as progress:
        for _, number, problem in validate_rows(files, progress, options=options):
            rows += number > 0
            if problem is not None:
                problems += 1
                print(problem, file=sys.stderr)
    print(f"validate: {len(files)} file(s), {rows:,} rows, {problems:,} problem(s)", file=sys.stderr)
    if problems:
        raise typer.Exit(2)


@app.command("convert")
def convert(
    src: str = typer.Argument(..., help=f"Input source ({SOURCE_HELP})."),
    dst: str = typer.Argument(..., help="Output: .jsonl, .jsonl.gz, .parquet, or - for jsonl on stdout."),
    chosen_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("chosen")),
    rejected_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("rejected")),
    prompt_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("prompt")),
    skip_invalid: bool = typer.Option(False, help=SKIP_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    ultrafeedback: str = typer.Option("binarize", help=ULTRAFEEDBACK_HELP),
    criteria: Optional[str] = typer.Option(None, help=CRITERIA_HELP),
    allow_empty_responses: bool = typer.Option(False, help=EMPTY_HELP),
) -> None:
    """Convert a preference source to canonical rows: explicit {prompt, chosen, rejected, ...}.

    jsonl output keeps one-message sides as strings; parquet stores prompt/chosen/rejected as lists
    of {role, content} and is written in batches. The output appears only when complete (written
    to a temporary file, then renamed). A summary goes to stderr.

    Example: gpmctl data convert hh-rlhf.jsonl.gz pairs.parquet

    Example: gpmctl data convert 'hh.jsonl.gz:0.7,ultrafeedback:uf.jsonl:0.3' mixed.parquet

    Example: gpmctl data convert raw.jsonl pairs.jsonl --prompt-key question --chosen-key good --rejected-key bad

    Example: gpmctl data convert ultrafeedback.jsonl cyclic.jsonl --ultrafeedback cyclic --criteria 'honesty>truthfulness>helpfulness'
    """
    from gpmctl.data.ops import convert as convert_file

    options = _read_options(fmt, ultrafeedback, criteria, allow_empty_responses, (prompt_key, chosen_key, rejected_key))
    skipped = _SkipReporter()
    with _progress("converting") as progress:
        result = convert_file(src, dst, skip_invalid=skip_invalid, on_error=skipped, progress=progress, options=options)
    skipped.summary()
    print(f"convert: wrote {result['rows']:,} rows to {dst}", file=sys.stderr)


@app.command("stats")
def stats(
    path: str = typer.Argument(..., help=f"Input source ({SOURCE_HELP})."),
    tokenizer: Optional[str] = typer.Option(None, help="Also count tokens with this tokenizer (hub id, folder, or tiny)."),
    against: Optional[str] = typer.Option(None, help="Count prompts of PATH that also occur in this source (contamination)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Read at most this many rows."),
    prompt_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("prompt") + " Not applied to --against."),
    chosen_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("chosen")),
    rejected_key: Optional[str] = typer.Option(None, help=KEY_HELP.format("rejected")),
) -> None:
    """Print statistics of a preference source as JSON on stdout.

    Keys: rows, valid, invalid (a row whose only fault is an empty answer counts as valid here and in
    empty_responses); formats (valid rows per detected format); distinct_prompts;
    duplicate_pairs (rows whose prompt, chosen and rejected repeat an earlier row exactly);
    swapped_pairs (rows that repeat an earlier pair with chosen and rejected exchanged: a tie);
    empty_responses (whitespace-only chosen / rejected); chars: p50/p90/p99/max length of the prompt
    (all its messages), chosen and rejected texts (nearest-rank percentiles); tokens: the same in
    tokens (raw texts, no chat template, no special tokens) with --tokenizer; against: rows and
    invalid rows of the other file, shared_prompts (distinct prompts of PATH found there) and
    rows_with_shared_prompt; prompts are compared casefolded with whitespace collapsed.

    Example: gpmctl data stats pairs.jsonl --tokenizer tiny --against test.jsonl
    """
    from gpmctl.data.ops import stats as file_stats

    tok = None
    if tokenizer is not None:
        from gpmctl.models.sources import load_tokenizer

        tok = load_tokenizer(tokenizer)
    with _progress("reading") as progress:
        result = file_stats(
            path,
            tokenizer=tok,
            against=against,
            limit=limit,
            progress=progress,
            options=_read_options(keys=(prompt_key, chosen_key, rejected_key)),
        )
    print(json.dumps(result))


@app.command("split")
def split(
    src: str = typer.Argument(..., help=f"Input source ({SOURCE_HELP})."),
    out_dir: str = typer.Argument(..., help="Folder for train.jsonl and eval.jsonl (created if needed)."),
    eval_fraction: float = typer.Option(0.1, help="Expected share of prompts held out for eval, in [0, 1]."),
    seed: int = typer.Option(0, help="Seed of the prompt hash: the same seed gives the same split."),
    skip_invalid: bool = typer.Option(False, help=SKIP_HELP),
    allow_empty_responses: bool = typer.Option(False, help=EMPTY_HELP),
) -> None:
    """Split a source into train and eval BY PROMPT: all pairs of a prompt land on the same side.

    A pair is held out when a hash of its prompt messages and the seed falls below
    --eval-fraction: the rule `train-rm` uses for data.eval_fraction, so the sides match. The
    share of rows held out is close to, not exactly, the fraction. Prints the counts as JSON.

    Example: gpmctl data split pairs.jsonl data/split --eval-fraction 0.1 --seed 0
    """
    from gpmctl.data.ops import split as split_file

    skipped = _SkipReporter()
    with _progress("splitting") as progress:
        result = split_file(
            src,
            out_dir,
            eval_fraction=eval_fraction,
            seed=seed,
            skip_invalid=skip_invalid,
            on_error=skipped,
            progress=progress,
            options=_read_options(allow_empty=allow_empty_responses),
        )
    skipped.summary()
    print(json.dumps(result))


@app.command("mix")
def mix(
    dst: str = typer.Argument(..., help="Output: .jsonl, .jsonl.gz, .parquet, or - for jsonl on stdout."),
    sources: List[str] = typer.Argument(
        ..., help=f"Sources as SOURCE:WEIGHT (weight 1 when left out; {SOURCE_HELP}); a mixture argument adds its parts."
    ),
    seed: Optional[int] = typer.Option(None, hidden=True, help="Ignored: mixing is deterministic."),
    total: Optional[int] = typer.Option(None, min=1, help="Rows to write; default: the sum of the sources' valid rows."),
    skip_invalid: bool = typer.Option(False, help=SKIP_HELP),
    allow_empty_responses: bool = typer.Option(False, help=EMPTY_HELP),
) -> None:
    """Write a weighted mixture of sources: the records a recipe with data.train=SRC:W,... reads.

    Rows follow the deterministic rule of recipe mixtures: each
    source's share of any stretch of DST stays within one row of WEIGHT / sum of weights, and a
    source that runs out starts again from its first row (a small source with a large weight is
    repeated). --total rows are written (default: the sum of the sources' valid rows; then DST holds
    exactly the records of the recipe mixture, in its order). Prints per-source counts as JSON on
    stdout (on stderr when DST is -).

    Example: gpmctl data mix mix.jsonl hh.jsonl.gz:0.7 ultrafeedback.jsonl:0.3 --total 100000
    """
    from gpmctl.data.mix import parse_mix_source
    from gpmctl.data.ops import mix as mix_files
    from gpmctl.data.sources import parse_mixture
    from gpmctl.utils import log

    if seed is not None:
        log("data mix: --seed is ignored: mixing is deterministic (the rule of recipe mixtures, gpmctl/data/mix.py)")
    skipped = _SkipReporter()
    with _progress("mixing") as progress:
        result = mix_files(
            dst,
            [part for s in sources for part in (parse_mixture(s) or [parse_mix_source(s)])],
            total=total,
            skip_invalid=skip_invalid,
            on_error=skipped,
            progress=progress,
            options=_read_options(allow_empty=allow_empty_responses),
        )
    skipped.summary()
    print(json.dumps(result), file=sys.stderr if dst == "-" else sys.stdout)
