"""`gpmctl export`: a trained model as a self-describing Hugging Face folder others can load.

The folder keeps the released-checkpoint layout (backbone weights under the causal-LM names,
`value_head.weight`, `prompt_head.weight`), adds the head settings to config.json and
preference_head.json, the tokenizer, and a model card with the recipe and metrics of the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from gpmctl.errors import ConfigError, ModelError
from gpmctl.models.io import load_model, normal_permissions, read_json, save_model
from gpmctl.models.sources import load_tokenizer
from gpmctl.utils import file_in_the_way

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHARD_SIZE = re.compile(r"\d+(\.\d+)?(TB|GB|MB|KB)", re.IGNORECASE)
RUN_FILES = ("recipe.yaml", "log.jsonl", "checkpoints")
"""What a train-rm run folder holds besides the model: training files an export must not replace unasked."""


def export_model(
    source: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    as_sequence_classifier: bool = False,
    force: bool = False,
) -> Path:
    """Write `source` to `out_dir` in the gpmctl/released layout, or, for a BT model with
    `as_sequence_classifier`, as a plain `AutoModelForSequenceClassification` (num_labels=1) folder.

    A folder that already holds files is replaced only with `force`, and whole: the export is written
    beside it and swapped in, so no file of an older export survives and an interrupted one changes nothing."""
    source, out_dir = Path(source), Path(out_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if not SHARD_SIZE.fullmatch(max_shard_size):
        raise ConfigError(f"--max-shard-size: expected a size such as 5GB or 500MB, got {max_shard_size!r}")
    check_export_target(source, out_dir, force)
    model = load_model(source, dtype="float32")
    if dtype is not None:
        model = model.to(DTYPES[dtype])
    tokenizer = load_tokenizer(str(source))
    card = model_card(source, model)
    with replacing_folder(out_dir) as tmp:
        if as_sequence_classifier:
            save_sequence_classifier(model, tokenizer, tmp, card, max_shard_size)
        else:
            save_model(model, tmp, tokenizer, extra_files={"README.md": card}, max_shard_size=max_shard_size)
    return out_dir


def check_export_target(source: Path, out_dir: Path, force: bool) -> None:
    """Refuse, before any weight is read, an export that cannot be written or would destroy something."""
    blocker = file_in_the_way(out_dir)  # missing folders are created
    if blocker == out_dir.absolute():
        raise ConfigError(f"{out_dir}: is a file, not a folder")
    if blocker:
        raise ConfigError(f"{out_dir}: {blocker} is a file, not a folder")
    target, model = out_dir.resolve(), source.resolve()
    if target == model or target in model.parents:
        relation = "is" if target == model else "holds"
        raise ConfigError(f"{out_dir}: {relation} the source model folder {source}; export to another folder")
    held = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if held and not force:
        run = [name for name in RUN_FILES if name in held]
        what = (
            f"is a train-rm run folder ({', '.join(run)}): an export would overwrite its training files"
            if run
            else f"already holds {len(held)} files ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''})"
        )
        raise ConfigError(f"{out_dir}: {what}; pass --force to replace the whole folder")


@contextlib.contextmanager
def replacing_folder(out_dir: Path):
    """A new temporary folder beside `out_dir` that takes its place when the block succeeds (the old folder
    is then removed); if the block fails or is interrupted, `out_dir` stays as it was."""
    out_dir = out_dir.resolve()  # through a symlink: the folder it points to is the one replaced
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".exporting"))
    try:
        yield tmp
        normal_permissions(tmp)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
            return
        old = tmp.with_name(tmp.name + ".old")
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_sequence_classifier(model, tokenizer, out_dir: Path, card: str, max_shard_size: str) -> Path:
    """A BT model as `AutoModelForSequenceClassification` with num_labels=1: the backbone's weights plus
    `score.weight` = value_head.weight, so plain transformers (and RewardBench's pipeline) load it. The
    classifier reads the last non-pad token, which is where gpmctl reads the reward when the input ends
    with EOS as gpmctl formats it (the model card says so)."""
    from transformers import AutoModelForSequenceClassification

    if model.head.kind != "bt":
        raise ConfigError("--sequence-classifier needs a BT model: a GPM has an embedding, not a scalar reward")
    config = model.backbone.config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=model.value_head.weight.dtype)
    missing, unexpected = getattr(classifier, classifier.base_model_prefix).load_state_dict(
        model.backbone.state_dict(), strict=False
    )
    if missing or unexpected:
        raise ConfigError(
            f"cannot map the backbone onto {type(classifier).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    head = getattr(classifier, "score", None) or getattr(classifier, "classifier", None)
    if not isinstance(head, torch.nn.Linear) or head.weight.shape != model.value_head.weight.shape:
        raise ConfigError(f"{type(classifier).__name__} has no single linear scoring layer to hold the reward head")
    with torch.no_grad():
        head.weight.copy_(model.value_head.weight)
        if head.bias is not None:
            head.bias.zero_()
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save_pretrained(out_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    note = (
        "\n## Plain transformers\n\nThis folder is an `AutoModelForSequenceClassification` (num_labels=1); its logit is\n"
        "the BT reward when the input is formatted as gpmctl does: chat template, and the last token set to EOS.\n"
    )
    (out_dir / "README.md").write_text(card + note)
    return out_dir


def model_card(source: Path, model) -> str:
    head = model.head
    backbone = model.backbone.config
    params = sum(p.numel() for p in model.parameters())
    what = (
        f"General Preference Model: {head.dim}-dimensional preference embedding, "
        f"{'with' if head.gate else 'without'} prompt gate, L2 {'on' if head.l2 else 'off'}, tau {head.tau}"
        if head.kind == "gpm"
        else f"Bradley-Terry reward model, tau {head.tau}"
    )
    lines = [
        "---",
        "library_name: transformers",
        "tags: [reward-model, preference-model, gpm, gpmctl]",
        "---",
        "",
        f"# {source.name}",
        "",
        f"{what}. Backbone: `{backbone.model_type}` ({params / 1e6:.1f}M parameters, hidden size "
        f"{getattr(backbone, 'hidden_size', '?')}). Trained with gpmctl.",
        "",
        "Score convention (arXiv 2410.02197, the authors' code): for responses a, b to prompt x with embeddings",
        "v = normalize(value_head(h_last)) and gate l = softmax(prompt_head(h_prompt_end)),",
        "s(a > b) = sum_l l_l (a[2l] b[2l+1] - a[2l+1] b[2l]) and P(a > b) = sigmoid(s / tau).",
        "",
        "## Use",
        "",
        "```bash",
        "gpmctl score a.jsonl b.jsonl --model THIS_FOLDER     # P(a > b) per line",
        "```",
        "",
        "The head settings are in `preference_head.json` (and `config.json` under `preference_head`);",
        "`transformers.AutoModel.from_pretrained(folder)` loads the backbone alone.",
        "",
        "## Head",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in head.to_json().items() if k not in ("format", "version")],
    ]
    metrics, recipe = source / "metrics.json", source / "recipe.yaml"
    if metrics.is_file():
        data = read_json(metrics)
        if not isinstance(data, dict):
            raise ModelError(f"{metrics}: expected a JSON object")
        final = data.get("model_eval") or data.get("final_eval") or {}
        lines += ["", "## Evaluation (held-out pairs of the training run)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
        lines += [f"| optimizer steps | {data.get('steps')} |"]
    if recipe.is_file():
        lines += ["", "## Training recipe", "", "```yaml", recipe.read_text().rstrip(), "```"]
    return "\n".join(lines) + "\n"
