"""`gpmctl export`: a trained model as a self-describing Hugging Face folder others can load.

The folder keeps the released-checkpoint layout (backbone weights under the causal-LM names,
`value_head.weight`, `prompt_head.weight`), adds the head settings to config.json and
preference_head.json, the tokenizer, and a model card with the recipe and metrics of the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpmctl.errors import ConfigError
from gpmctl.models.loading import load_model, load_tokenizer, save_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def export_model(source: str | Path, out_dir: str | Path, dtype: str | None = None, max_shard_size: str = "5GB") -> Path:
    source, out_dir = Path(source), Path(out_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if out_dir.resolve() == source.resolve():
        raise ConfigError(f"{out_dir}: the export folder must differ from the source")
    model = load_model(source, dtype="float32")
    if dtype is not None:
        model = model.to(DTYPES[dtype])
    tokenizer = load_tokenizer(str(source))
    card = model_card(source, model)
    return save_model(model, out_dir, tokenizer, extra_files={"README.md": card}, max_shard_size=max_shard_size)


def model_card(source: Path, model) -> str:
    head = model.head
    backbone = model.backbone.config
    params = sum(p.numel() for p in model.parameters())
    what = (f"General Preference Model: {head.dim}-dimensional preference embedding, "
            f"{'with' if head.gate else 'without'} prompt gate, L2 {'on' if head.l2 else 'off'}, tau {head.tau}"
            if head.kind == "gpm" else f"Bradley-Terry reward model, tau {head.tau}")  # fmt: skip
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
        data = json.loads(metrics.read_text())
        final = data.get("model_eval") or data.get("final_eval") or {}
        lines += ["", "## Evaluation (held-out pairs of the training run)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
        lines += [f"| optimizer steps | {data.get('steps')} |"]
    if recipe.is_file():
        lines += ["", "## Training recipe", "", "```yaml", recipe.read_text().rstrip(), "```"]
    return "\n".join(lines) + "\n"
