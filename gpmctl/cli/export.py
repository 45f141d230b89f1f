"""`gpmctl export RUN_OR_MODEL OUT_DIR`: a standard Hugging Face folder others can load."""

from __future__ import annotations

import json
from typing import Optional

import typer


def export(
    source: str = typer.Argument(..., help="A train-rm run folder or any model folder gpmctl loads."),
    out_dir: str = typer.Argument(..., help="The folder to write."),
    dtype: Optional[str] = typer.Option(None, help="Cast the weights: fp32, bf16 or fp16 (default: keep)."),
    max_shard_size: str = typer.Option("5GB", help="Largest safetensors shard, e.g. 2GB, 500MB."),
    sequence_classifier: bool = typer.Option(
        False, "--sequence-classifier", help="BT only: write an AutoModelForSequenceClassification (num_labels=1) folder."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace OUT_DIR when it already holds files (an older export, a run folder): the export is written beside it, then swapped in whole.",
    ),
) -> None:
    """Write a model as a Hugging Face folder: config.json (with the head settings), sharded
    safetensors in the released-checkpoint layout, tokenizer, preference_head.json and a model card
    with the run's recipe and metrics. OUT_DIR must be new or empty, or is replaced as a whole with
    --force (never the source folder or a folder holding it).

    Example: gpmctl export runs/cyclic_tiny_gpm exported/cyclic-gpm --dtype bf16
    """
    from gpmctl.models.export import export_model
    from gpmctl.utils import quiet_libraries

    quiet_libraries()
    path = export_model(source, out_dir, dtype, max_shard_size, sequence_classifier, force)
    files = sorted(p.name for p in path.iterdir())
    print(json.dumps({"output_dir": str(path), "files": files}))
