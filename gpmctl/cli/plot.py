"""`gpmctl plot RUN_DIR`: training curves, GPM embedding planes and reliability diagrams as PNG files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def plot(
    run_dir: str = typer.Argument(..., help="A train-rm run folder (log.jsonl, and the model for --data)."),
    data: Optional[str] = typer.Option(None, help="Preference data whose responses to embed (e.g. cyclic:test): a GPM's embedding planes."),
    examples: Optional[str] = typer.Option(None, help="Per-example jsonl of `gpmctl eval pairs --examples`: a reliability diagram."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", "-o", help="Where the PNG files go (default RUN_DIR/plots)."),
    limit: int = typer.Option(400, help="At most this many responses in the embedding planes."),
) -> None:
    """Draw a run: training curves (loss, accuracy, learning rate, eval), the 2-D planes of a GPM's
    embeddings, and a reliability diagram. Needs matplotlib (the plot extra).

    Example: gpmctl plot runs/cyclic_tiny_gpm --data cyclic:test
    """
    from gpmctl import plot as P
    from gpmctl.errors import GpmctlError

    run = Path(run_dir)
    out = Path(out_dir) if out_dir else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if (run / "log.jsonl").is_file():
        written.append(P.training_curves(run / "log.jsonl", out / "training.png"))
    elif data is None and examples is None:
        raise GpmctlError(f"{run}: no log.jsonl to plot (and neither --data nor --examples given)")
    if data:
        from gpmctl.data.sources import read_source
        from gpmctl.models.loading import load_model, load_tokenizer
        from gpmctl.utils import quiet_libraries

        quiet_libraries()
        model = load_model(run, dtype="float32")
        records = list(read_source(data, limit=limit))
        written.append(P.embedding_planes(model, load_tokenizer(str(run)), records, out / "embeddings.png", limit=limit))
    if examples:
        rows = [json.loads(line) for line in Path(examples).read_text().splitlines() if line.strip()]
        written.append(P.reliability_diagram(rows, out / "reliability.png"))
    print(json.dumps({"plots": [str(p) for p in written]}))
