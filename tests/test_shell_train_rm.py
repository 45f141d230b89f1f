"""`gpmctl train-rm` on bad input: exit 2, one stderr line naming the file and key, no traceback, and
the run folder, data and recipe left exactly as they were. Every case starts from a copy of the same
finished run (4 steps, checkpoints at steps 2 and 4) and most pass --overwrite or --resume auto, so a
check that came after the first write or delete would show in the snapshot. Then the failures that are
not bad input: a diverging run, a damaged checkpoint, a second run into a folder in use."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.shell import assert_one_line_error, run, snapshot

RECIPE = """\
output_dir: run
model:
  backbone: tiny
  dim: 4
  tiny: {hidden_size: 32, intermediate_size: 64, num_layers: 1, initializer_range: 0.3}
data:
  train: data/train.jsonl
  eval: data/test.jsonl
  max_length: 64
train:
  batch_size: 8
  max_steps: 4
  save_steps: 2
  logging_steps: 2
  lr: 1.0e-3
  keep_best: false
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A folder holding recipe.yaml, data/ and run/ (a finished 4-step run): the cases' starting point."""
    base = tmp_path_factory.mktemp("train_rm")
    (base / "recipe.yaml").write_text(RECIPE)
    (base / "data").mkdir()
    for name, n in (("train", 48), ("test", 16)):
        rows = [{"prompt": f"{name} question {i}?", "chosen": f"answer {i}", "rejected": f"reply {i % 5}"} for i in range(n)]
        (base / "data" / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = run("train-rm", "recipe.yaml", cwd=base)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (base / "run" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    return base


def _write(name: str, text: str | bytes):
    def setup(w: Path) -> None:
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _drop_last_pairs(w: Path) -> None:
    lines = (w / "data" / "train.jsonl").read_text().splitlines(keepends=True)
    (w / "data" / "train.jsonl").write_text("".join(lines[:-8]))  # same file name, other content


def _hold_lock(w: Path):
    held = open(w / "run" / ".lock", "a")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live run holds it
    return held


OVERWRITE, RESUME = ["--overwrite"], ["--resume", "auto"]
CASES = {
    # recipe values
    "lr infinite": (None, ["train.lr=.inf", *OVERWRITE], ["recipe.yaml", "train.lr", "finite"]),
    "lr zero": (None, ["train.lr=0", *OVERWRITE], ["recipe.yaml", "train.lr", "> 0"]),
    "batch size zero": (None, ["train.batch_size=0", *OVERWRITE], ["recipe.yaml", "train.batch_size"]),
    "grad accum negative": (None, ["train.grad_accum=-1", *OVERWRITE], ["recipe.yaml", "train.grad_accum"]),
    "max length zero": (None, ["data.max_length=0", *OVERWRITE], ["recipe.yaml", "data.max_length"]),
    "epochs zero": (None, ["train.max_steps=null", "train.epochs=0", *OVERWRITE], ["recipe.yaml", "train.epochs"]),
    "max steps negative": (None, ["train.max_steps=-3", *OVERWRITE], ["recipe.yaml", "train.max_steps"]),
    "save steps zero": (None, ["train.save_steps=0", *OVERWRITE], ["recipe.yaml", "train.save_steps"]),
    "logging steps zero": (None, ["train.logging_steps=0", *OVERWRITE], ["recipe.yaml", "train.logging_steps"]),
    "eval batch size zero": (None, ["evaluate.batch_size=0", *OVERWRITE], ["recipe.yaml", "evaluate.batch_size"]),
    "unknown dtype": (None, ["model.dtype=fp8", *OVERWRITE], ["recipe.yaml", "model.dtype", "fp8"]),
    "unknown precision": (None, ["train.precision=fp8", *OVERWRITE], ["recipe.yaml", "train.precision", "fp8"]),
    "fp16 on a CPU": (None, ["train.precision=fp16", *OVERWRITE], ["recipe.yaml", "train.precision", "CUDA"]),
    # recipe files
    "base missing": (
        _write("overlay.yaml", "base: nothere.yaml\n"),
        ["@overlay.yaml", *OVERWRITE],
        ["overlay.yaml", "base", "nothere.yaml"],
    ),
    "base not a mapping": (
        lambda w: (_write("list.yaml", "- 1\n")(w), _write("overlay.yaml", "base: list.yaml\n")(w)),
        ["@overlay.yaml", *OVERWRITE],
        ["overlay.yaml", "base", "list.yaml", "mapping"],
    ),
    "base cycle": (
        lambda w: (_write("a.yaml", "base: b.yaml\n")(w), _write("b.yaml", "base: a.yaml\n")(w)),
        ["@a.yaml", *OVERWRITE],
        ["b.yaml", "base", "a.yaml"],
    ),
    "base bad YAML": (
        lambda w: (_write("bad.yaml", "train:\n  lr: [1\n")(w), _write("overlay.yaml", "base: bad.yaml\n")(w)),
        ["@overlay.yaml", *OVERWRITE],
        ["overlay.yaml", "base", "bad.yaml:", "YAML"],
    ),
    "recipe not UTF-8": (
        _write("latin.yaml", RECIPE.encode() + b"# caf\xe9\n"),
        ["@latin.yaml", *OVERWRITE],
        [f"latin.yaml:{RECIPE.count(chr(10)) + 1}", "UTF-8"],
    ),
    # inputs that are checked before the first write
    "train file missing": (None, ["data.train=data/none.jsonl", *OVERWRITE], ["data/none.jsonl"]),
    "train file empty": (_write("data/empty.jsonl", ""), ["data.train=data/empty.jsonl", *OVERWRITE], ["data/empty.jsonl"]),
    "eval file empty": (_write("data/empty.jsonl", ""), ["data.eval=data/empty.jsonl", *OVERWRITE], ["data/empty.jsonl"]),
    "frozen backbone, train file empty": (
        _write("data/empty.jsonl", ""),
        ["model.freeze_backbone=true", "data.train=data/empty.jsonl", *OVERWRITE],
        ["data/empty.jsonl"],
    ),
    "train file not JSON": (
        _write("data/bad.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{oops\n'),
        ["data.train=data/bad.jsonl", *OVERWRITE],
        ["data/bad.jsonl:2"],
    ),
    "rmbench folder missing": (None, ["evaluate.rmbench=nothere", *OVERWRITE], ["recipe.yaml", "evaluate.rmbench", "nothere"]),
    "rewardbench file missing": (
        None,
        ["evaluate.rewardbench=rb.parquet", *OVERWRITE],
        ["recipe.yaml", "evaluate.rewardbench", "rb.parquet"],
    ),
    "backbone missing": (None, ["model.backbone=./nothere-model", *OVERWRITE], ["nothere-model"]),
    # resuming with another recipe or other data
    "resume other lr": (None, ["train.lr=5e-4", *RESUME], ["recipe.yaml", "train.lr", "0.0005"]),
    "resume other dim": (None, ["model.dim=6", *RESUME], ["recipe.yaml", "model.dim", "4 -> 6"]),
    "resume other seed": (None, ["train.seed=7", *RESUME], ["recipe.yaml", "train.seed"]),
    "resume other data file": (None, ["data.train=data/test.jsonl", *RESUME], ["recipe.yaml", "data.train"]),
    "resume changed data": (_drop_last_pairs, [*RESUME], ["recipe.yaml", "data.train", "differ"]),
    "resume other global batch": (None, ["train.batch_size=4", *RESUME], ["global batch", "train.batch_size"]),
    "resume not a checkpoint": (None, ["--resume", "run"], ["run", "not a checkpoint"]),
    "overwrite and resume": (None, [*OVERWRITE, *RESUME], ["--overwrite", "--resume"]),
    "a finished run again": (None, [], ["run", "--resume auto", "--overwrite"]),
    # where the run would go
    "output_dir is a file": (None, ["output_dir=data/train.jsonl", *OVERWRITE], ["recipe.yaml", "output_dir", "is a file"]),
    "output_dir under a file": (
        None,
        ["output_dir=data/train.jsonl/run", *OVERWRITE],
        ["recipe.yaml", "output_dir", "is a file"],
    ),
    "frozen backbone, output_dir under a file": (
        None,
        ["model.freeze_backbone=true", "output_dir=data/train.jsonl/run", *OVERWRITE],
        ["recipe.yaml", "output_dir", "is a file"],
    ),
    # the folder in use
    "second run in the folder": (_hold_lock, [*RESUME], ["run", ".lock", "another gpmctl run"]),
    "frozen backbone, second run in the folder": (
        _hold_lock,
        ["model.freeze_backbone=true", *OVERWRITE],
        ["run", ".lock", "another gpmctl run"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(case, finished, tmp_path):
    setup, args, needles = CASES[case]
    w = tmp_path / "w"
    shutil.copytree(finished, w)
    held = setup(w) if setup else None
    recipe = args[0][1:] if args and args[0].startswith("@") else "recipe.yaml"
    args = args[1:] if args and args[0].startswith("@") else args
    before = snapshot(w)
    result = run("train-rm", recipe, *args, cwd=w)
    if hasattr(held, "close"):
        held.close()
    assert_one_line_error(result, *needles)
    assert snapshot(w) == before


def _error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("gpmctl: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_a_diverging_run_stops_at_the_first_non_finite_step_and_saves_nothing(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "w")
    args = ["output_dir=diverged", "train.lr=1e30", "train.warmup_ratio=0", "train.save_steps=1"]
    result = run("train-rm", "recipe.yaml", *args, cwd=tmp_path / "w")
    assert result.returncode == 1, result.stderr
    line = _error_line(result.stderr)
    assert "step 2" in line and "gradient norm is not finite" in line, line  # step 1 blew the weights up, step 2 sees it
    out = tmp_path / "w" / "diverged"
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000001"]  # the last step that was finite


def test_resume_falls_back_past_a_damaged_checkpoint_and_applies_the_changes_it_allows(finished, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(finished, w)
    weights = w / "run" / "checkpoints" / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated copy
    result = run("train-rm", "recipe.yaml", "train.save_steps=1", *RESUME, cwd=w)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "step-000004" in warnings[0], result.stderr
    assert "resumed from run/checkpoints/step-000002 at step 2" in result.stderr
    assert "resume: train.save_steps: 2 -> 1" in result.stderr
    assert "save_steps: 1" in (w / "run" / "recipe.yaml").read_text()  # what ran is what the saved recipe says
    assert (w / "run" / "checkpoints" / "step-000003").is_dir()  # the new save_steps applied
    a, b = load_file(finished / "run" / "model.safetensors"), load_file(w / "run" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)  # steps 3-4 again from step 2: the same model as the first time
