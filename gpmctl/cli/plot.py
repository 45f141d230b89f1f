"""`gpmctl plot RUN_DIR`: training curves, GPM embedding planes and reliability diagrams as PNG files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


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
    """Draw a run: training curves (loss, accuracy, learning rate, eval), the 2-D planes of a GPM's
    embeddings, and a reliability diagram. Needs matplotlib (the plot extra).

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
