"""`gpmctl plot run RUN_DIR` (also `gpmctl plot RUN_DIR`): training curves, GPM embedding planes and reliability
diagrams as PNG files; `gpmctl plot eval RESULT.json ...`: a benchmark's results as bars, one file or several compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from gpmctl.cli.factory import Group, new_app


class _RunByDefault(Group):
    """`gpmctl plot RUN_DIR ...`, the form from before `plot eval`, is `gpmctl plot run RUN_DIR ...`."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = new_app(
    cls=_RunByDefault,
    no_args_is_help=False,
    help="Pictures of a training run (`gpmctl plot RUN_DIR` is `gpmctl plot run RUN_DIR`) or of eval results. Needs matplotlib.",
)

PICTURE_SUFFIXES = (".png", ".pdf", ".svg")


@app.command("run")
def plot(
    run_dir: str = typer.Argument(..., help="A train-rm run folder (log.jsonl, and the model for --data)."),
    data: Optional[str] = typer.Option(
        None, help="Preference data whose responses to embed (e.g. cyclic:reworded): a GPM's embedding planes."
    ),
    examples: Optional[str] = typer.Option(
        None, help="Per-example jsonl of `gpmctl eval pairs --examples`: a reliability diagram."
    ),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", "-o", help="Where the PNG files go (default RUN_DIR/plots)."),
    limit: int = typer.Option(400, help="At most this many responses in the embedding planes."),
) -> None:
    """Draw a train-rm run: training curves, a GPM's embedding planes, a reliability diagram.

    The curves are loss, accuracy, learning rate and eval from log.jsonl; --data embeds responses with the
    run's GPM and draws each 2-D plane of the embeddings; --examples draws the reliability diagram of
    a per-example file. `gpmctl plot RUN_DIR` is the same command. Needs matplotlib (the plot extra).

    Example: gpmctl plot runs/cyclic_tiny_gpm --data cyclic:reworded
    """
    from gpmctl import plot as P
    from gpmctl.errors import ConfigError, DataError
    from gpmctl.models.heads import HEAD_FILE
    from gpmctl.utils import file_in_the_way

    # Every input is read and checked before the first picture is drawn.
    run = Path(run_dir)
    log, has_model = run / "log.jsonl", (run / HEAD_FILE).is_file()
    if not run.is_dir():
        raise DataError(run_dir, "no such run folder")
    if (run / "iter-0").is_dir():
        raise DataError(run_dir, "is a train-gpo run folder; gpmctl plot draws train-rm runs")
    if not (log.is_file() or has_model):
        raise DataError(run_dir, f"not a train-rm run folder (no log.jsonl, no {HEAD_FILE})")
    if not (log.is_file() or data or examples):
        raise DataError(run_dir, "no log.jsonl to plot (and neither --data nor --examples given)")
    if data and not has_model:
        raise DataError(run_dir, f"holds no model ({HEAD_FILE}) to embed --data with")
    if limit < 1:
        raise ConfigError(f"--limit: must be >= 1, got {limit}")
    out = Path(out_dir) if out_dir else run / "plots"
    blocker = file_in_the_way(out)
    if blocker:
        raise ConfigError(f"--out-dir {out}: {blocker} is a file, not a directory")
    P.pyplot()
    events = P.read_log(log) if log.is_file() else None
    probabilities = P.read_probabilities(examples) if examples else None
    if data:
        from gpmctl.data.sources import read_source
        from gpmctl.models.io import load_model
        from gpmctl.models.sources import load_tokenizer
        from gpmctl.utils import quiet_libraries

        quiet_libraries()
        model = load_model(run, dtype="float32")
        if model.head.kind != "gpm":
            raise DataError(run_dir, "--data: embedding planes need a GPM (this model is BT: a scalar reward)")
        records = list(read_source(data, limit=limit))
        if not records:
            raise DataError(data, "holds no preference pairs")
        tokenizer = load_tokenizer(str(run))

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if events is not None:
        written.append(P.training_curves(events, out / "training.png", run.resolve().name))
    if data:
        written.append(P.embedding_planes(model, tokenizer, records, out / "embeddings.png", limit=limit))
    if probabilities is not None:
        written.append(P.reliability_diagram(probabilities, out / "reliability.png"))
    print(json.dumps({"plots": [str(p) for p in written]}))


@app.command("eval")
def plot_eval(
    results: List[str] = typer.Argument(
        ..., help="Results JSON files of `gpmctl eval ... -o FILE`, all of one benchmark; several are compared."
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="The picture: .png, .pdf or .svg (default: the first file's name with .png)."
    ),
) -> None:
    """Draw eval results as bars by section; several files of one benchmark side by side.

    Each benchmark's subsets are grouped by section, with the section's own score (as the file gives it)
    as a dashed line: RewardBench's 4 sections, RewardBench 2's 6 subsets, RM-Bench's
    easy / normal / hard per domain, pairs' accuracy per subset and kind, cyclic sets' accuracy against the
    BT ceiling. Several files of one benchmark are drawn side by side, one colour per model. Needs matplotlib.

    Examples:
      gpmctl plot eval rb.json                            # rb.png beside it
      gpmctl plot eval gpm/rb.json bt/rb.json -o rb.pdf   # two models compared
    """
    from gpmctl import plot as P
    from gpmctl.errors import ConfigError
    from gpmctl.eval.results import read_results
    from gpmctl.utils import check_output_file

    out = Path(output) if output else Path(results[0]).with_suffix(".png")
    if out.suffix.lower() not in PICTURE_SUFFIXES:
        raise ConfigError(f"--output {out}: name the picture *.png, *.pdf or *.svg")
    check_output_file(out, f"--output {out}")
    P.pyplot()
    read = read_results(results)
    P.eval_bars(read, out)
    print(json.dumps({"plots": [str(out)]}))
