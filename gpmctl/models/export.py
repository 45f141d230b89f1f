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
from gpmctl.models.io import HUB_ID, load_model, normal_permissions, portable_files, read_json, save_model
from gpmctl.models.sources import load_tokenizer
from gpmctl.utils import file_in_the_way, first_line, log

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
    card = model_card(source, model, as_sequence_classifier)
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
    classifier reads the last token that is not its config's pad token; a model trained with the `template`
    token rule (the BT default) is read there by gpmctl too, so both give the same reward on the chat template's
    tokens. Under the paper's `overwrite` rule gpmctl reads an EOS put in place of the last token: said on stderr
    and in the card."""
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
    portable_files(out_dir)
    if model.head.eos != "template":
        log(
            f"warning: this model reads its reward with the {model.head.eos!r} token rule; plain transformers reads the "
            "last non-pad token of the text as given, so its rewards equal gpmctl's only on inputs ending as that rule "
            "makes them (see the model card); train BT models with model.eos: template (the default) to avoid this"
        )
    (out_dir / "README.md").write_text(card)
    return out_dir


BENCHMARK_DATASETS = {
    "rewardbench": "allenai/reward-bench",
    "rewardbench2": "allenai/reward-bench-2",
    "rmbench": "THU-KEG/RM-Bench",
}
"""The hub dataset of each benchmark a train-rm recipe can run (model-index `dataset.type`)."""

TOKEN_RULES = {
    "template": "the chat template's tokens as they are (`apply_chat_template(messages, tokenize=True)`), read at the "
    "last token that is not padding: what TRL, transformers' sequence classifiers and RewardBench do",
    "overwrite": "the chat-templated text tokenised, its last token replaced by EOS (the paper's code): feed "
    "`ids[:-1] + [eos_token_id]` to reproduce gpmctl's numbers",
    "append": "the chat-templated text tokenised, EOS appended unless it ends with EOS",
    "none": "the chat-templated text tokenised, read at its last token",
    "openrlhf": "OpenRLHF's rule: the templated text without trailing newlines, then ' ' + EOS, tokenised without "
    "added special tokens, last token set to EOS",
}


def model_card(source: Path, model, sequence_classifier: bool = False) -> str:
    """The folder's README.md as the Hub reads it (huggingface_hub.ModelCard): metadata (base model, library,
    pipeline tag, datasets, license, results in model-index form) from the run's recipe and metrics, what the
    model is, a usage snippet for this kind of folder, the head settings and the recipe. No machine paths: a
    local path in the recipe is shown by its last part."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    head, backbone = model.head, model.backbone.config
    recipe = _recipe(source)
    model_section, data = recipe.get("model") or {}, recipe.get("data") or {}
    name = _public(source.resolve().name)
    metrics = _metrics(source)
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=BENCHMARK_DATASETS.get(dataset, "local"),
            dataset_name=_public(str(dataset)),
            metric_type="accuracy",
            metric_value=round(float(value), 4),
            metric_name=metric,
        )
        for dataset, metric, value in metrics
    ]
    data_card = ModelCardData(
        base_model=_hub_id(model_section.get("backbone")),
        library_name="transformers" if sequence_classifier else "gpmctl",
        pipeline_tag="text-classification" if sequence_classifier else None,
        datasets=[d for d in (_hub_id(data.get("train")),) if d] or None,
        license=recipe.get("license"),
        tags=["reward-model", "preference-model", "gpmctl", {"gpm": "gpm", "bt": "bradley-terry", "gpm_bt": "gpm"}[head.kind]],
        model_name=name,
        eval_results=results or None,
    )
    params = sum(p.numel() for p in model.parameters())
    what = {
        "gpm": f"a General Preference Model (arXiv 2410.02197): {head.dim}-dimensional preference embedding, "
        f"{'with' if head.gate else 'without'} prompt gate, L2 {'on' if head.l2 else 'off'}, tau {head.tau}",
        "bt": "a Bradley-Terry reward model: one scalar reward per response, P(a > b) = sigmoid(r_a - r_b)",
        "gpm_bt": f"a hybrid preference model: a scalar reward (temperature {head.bt_tau}) plus a {head.dim}-dimensional "
        f"GPM embedding (tau {head.tau}), P(a > b) = sigmoid((r_a - r_b) / bt_tau + <R v_a, v_b> / tau)",
    }[head.kind]
    lines = [
        f"# {name}",
        "",
        f"This is {what}. Backbone: `{backbone.model_type}` ({params / 1e6:.1f}M parameters, hidden size "
        f"{getattr(backbone, 'hidden_size', '?')}). Trained with gpmctl.",
        "",
        f"Token rule (`eos: {head.eos}`): {TOKEN_RULES.get(head.eos, head.eos)}.",
        "",
        "## Use",
        "",
        *(_transformers_usage() if sequence_classifier else _gpmctl_usage(head)),
    ]
    if head.kind == "gpm":
        lines += [
            "",
            "Score (the authors' convention): v = normalize(value_head(h_last)), gate l = softmax(prompt_head(h_prompt_end)),",
            "s(a > b) = sum_l l_l (a[2l] b[2l+1] - a[2l+1] b[2l]), P(a > b) = sigmoid(s / tau).",
        ]
    lines += ["", "## Head", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in head.to_json().items() if k not in ("format", "version")]
    if metrics:
        lines += ["", "## Evaluation", "", "| data | metric | value |", "|---|---|---|"]
        lines += [f"| {_public(str(d))} | {m} | {v:.4f} |" for d, m, v in metrics]
    if recipe:
        import yaml

        lines += ["", "## Training recipe", "", "```yaml", yaml.safe_dump(_public_paths(recipe), sort_keys=False).rstrip(), "```"]
    card = ModelCard.from_template(data_card, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body="\n".join(lines))
    return str(card)


def _gpmctl_usage(head) -> list[str]:
    return [
        "With gpmctl installed:",
        "",
        "```bash",
        "gpmctl score a.jsonl b.jsonl --model THIS_FOLDER   # P(a > b) per line; K files give K x K",
        "gpmctl eval rewardbench --model THIS_FOLDER",
        "```",
        "",
        "The head settings are in `preference_head.json` (and `config.json` under `preference_head`);",
        "`transformers.AutoModel.from_pretrained(folder)` loads the backbone alone.",
    ]


def _transformers_usage() -> list[str]:
    return [
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        'model = AutoModelForSequenceClassification.from_pretrained("THIS_FOLDER")',
        'messages = [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]',
        'ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")',
        "reward = model(**ids).logits[0, 0].item()",
        "```",
        "",
        "`gpmctl score` and `gpmctl eval` read this folder as well, with the same rewards.",
    ]


def _recipe(source: Path) -> dict:
    import yaml

    file = source / "recipe.yaml"
    if not file.is_file():
        return {}
    try:
        recipe = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ModelError(f"{file}: not YAML ({first_line(e)})") from e
    return recipe if isinstance(recipe, dict) else {}


def _metrics(source: Path) -> list[tuple[str, str, float]]:
    """(data, metric, value) from the run's metrics.json: held-out pair accuracy and each benchmark's score."""
    file = source / "metrics.json"
    if not file.is_file():
        return []
    data = read_json(file)
    if not isinstance(data, dict):
        raise ModelError(f"{file}: expected a JSON object")
    out = []
    final = data.get("model_eval") or data.get("final_eval") or {}
    if isinstance(final.get("accuracy"), (int, float)):
        out.append(("held-out pairs", "accuracy", float(final["accuracy"])))
    for benchmark, result in (data.get("benchmarks") or {}).items():
        score = result.get("score", result.get("overall")) if isinstance(result, dict) else None
        if isinstance(score, (int, float)):
            out.append((benchmark, "score", float(score)))
    return out


def _hub_id(value) -> str | None:
    """A model or dataset source that names a hub repository (owner/name), else None."""
    return value if isinstance(value, str) and HUB_ID.fullmatch(value) and not Path(value).exists() else None


def _public(text: str) -> str:
    """A path shown without the machine's folders: its last part."""
    return Path(text).name if text.startswith(("/", "~", "./", "../")) else text


def _public_paths(value):
    if isinstance(value, dict):
        return {k: _public_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public_paths(v) for v in value]
    return _public(value) if isinstance(value, str) else value
