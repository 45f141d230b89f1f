"""The `gpmctl train-rm` recipe: typed sections that map one to one onto YAML keys and overrides.

Every field has a default, so a recipe names only what it changes; `gpmctl.config.loader` reads it (base
overlays, overrides, unknown keys and wrong types as errors naming the file and key). The fully resolved
recipe is saved with every run (`recipe.yaml` in the output folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpmctl.config import loader
from gpmctl.config.profiles import resolve_launch
from gpmctl.config.sections import LaunchConfig, OptimConfig, TinyBackbone, launch_checks, optimisation_checks, tiny_checks


@dataclass
class ModelConfig:
    """The backbone and the preference head; everything here is saved with the trained model."""

    backbone: str = "tiny"
    """`tiny` (built from `model.tiny`, offline), a local folder, or a Hugging Face model id."""
    tokenizer: str | None = None
    """Tokenizer folder or id; default: the backbone's own (the shipped tiny tokenizer for `tiny`)."""
    kind: Literal["gpm", "bt", "gpm_bt"] = "gpm"
    """`gpm`: preference embedding in R^dim with the skew-symmetric operator; `bt`: scalar reward; `gpm_bt`: both, a
    scalar reward plus dim skew-symmetric dimensions, s = (r_a - r_b) under `bt_tau` plus the GPM score under `tau`."""
    dim: int = 2
    """GPM embedding dimension 2k (even). Ignored for BT."""
    gate: bool = False
    """Prompt-dependent eigenvalue gate (softmax over the k blocks, read at the end of the prompt)."""
    gate_variant: Literal["softmax", "scaled_softmax"] = "softmax"
    """`softmax` as in the released checkpoints; `scaled_softmax` = k * softmax(logits / sqrt(hidden))."""
    l2: bool = True
    """L2-normalise the GPM embedding (paper section 4.2)."""
    tau: float | None = None
    """Temperature: P = sigmoid(s / tau). Default 0.1 for GPM (and gpm_bt's blocks), 1.0 for BT (the paper's settings)."""
    bt_tau: float = 1.0
    """gpm_bt: the temperature of the scalar part."""
    pool: Literal["last", "first"] = "last"
    """Token whose hidden state gives the embedding: the last real token (decoders) or the first (CLS)."""
    eos: Literal["auto", "overwrite", "append", "none", "template", "openrlhf"] = "auto"
    """Which token is read and how EOS gets there (gpmctl.data.tokenize.EOS_RULES). `overwrite`: the last token
    becomes EOS (the paper's code); `template`: the chat template's tokens as they are, read at the last non-pad
    token, as TRL and transformers' sequence classifiers do (so a BT export scores the same in plain
    transformers); `append`, `none`, `openrlhf` (OpenRLHF's reward models). `auto`: overwrite for GPM, template
    for BT."""
    gate_prompt: Literal["first_turn", "full_prompt"] = "first_turn"
    """Where the gate reads the prompt: end of the first user turn (reference) or of the whole prompt."""
    init_std: float | None = None
    """Std of the head initialisation; default 1 / (hidden_size + 1) as in the reference."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype when loading; `auto` = float32 on CPU, bfloat16 on a bf16-capable GPU. Training keeps the
    weights it updates in float32 (bf16 compute comes from train.precision's autocast), except where the engine's
    optimizer holds fp32 master copies itself (a sharded launch profile under mixed precision)."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel passed to transformers (`sdpa`, `eager`, `flash_attention_2`)."""
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    lora_rank: int = 0
    """LoRA rank for the backbone's linear layers (0: train every weight). Needs the peft extra; the
    saved model holds the merged weights, so loaders never need peft."""
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    """Which modules get adapters: `all-linear`, or a comma-separated list such as `q_proj,v_proj`."""
    freeze_backbone: bool = False
    """Train the head only. The backbone's hidden states at the read position and at the prompt end are
    computed once per sequence, cached under ~/.cache/gpmctl/features (shared by every later run on the
    same backbone and data: other head kinds, dimensions, gate/L2 variants, seeds), and the head trains
    on them in seconds (gpmctl/train/features.py). The saved model holds the unchanged backbone."""
    train_last_layers: int = 0
    """> 0: fine-tune only the last N transformer layers (and the final norm after them) with the head;
    the embeddings and earlier layers stay frozen. 0: every weight trains (or LoRA, see lora_rank)."""
    tiny: TinyBackbone = field(default_factory=TinyBackbone)

    def resolved_tau(self) -> float:
        return self.tau if self.tau is not None else (1.0 if self.kind == "bt" else 0.1)

    def resolved_eos(self) -> str:
        return self.eos if self.eos != "auto" else ("template" if self.kind == "bt" else "overwrite")


@dataclass
class DataConfig:
    """Where the preference pairs come from and how they are turned into tokens."""

    train: str | None = None
    """Training file (jsonl, jsonl.gz, json, parquet) in any format `gpmctl data` reads."""
    eval: str | None = None
    """Held-out file; if unset, `eval_fraction` of the training prompts are held out."""
    eval_fraction: float = 0.0
    """Fraction of training prompts held out for evaluation when `data.eval` is unset (split by prompt)."""
    max_length: int = 512
    """Tokens per (prompt, response) sequence after the chat template."""
    truncation: Literal["right", "left", "error"] = "right"
    """Over-long sequences: cut the end (reference), cut the start, or stop with an error."""
    max_samples: int | None = None
    """Use at most this many training pairs (the first ones), e.g. for a quick check."""
    allow_empty_responses: bool = False
    """Accept empty or whitespace-only answers (HH-RLHF prefers a few empty replies); otherwise each is an error."""
    prompt_key: str | None = None
    """Input key that holds the prompt, renamed to `prompt` in every row of data.train and data.eval (OpenRLHF's
    --prompt_key); a row without it has no prompt. null: rows are read by their own keys."""
    chosen_key: str | None = None
    """Input key that holds the chosen answer, renamed to `chosen` (OpenRLHF's --chosen_key)."""
    rejected_key: str | None = None
    """Input key that holds the rejected answer, renamed to `rejected` (OpenRLHF's --rejected_key)."""

    def input_keys(self) -> dict[str, str]:
        """prompt_key / chosen_key / rejected_key as gpmctl.data.formats.ReadOptions.keys."""
        from gpmctl.data.formats import input_keys

        return input_keys(self.prompt_key, self.chosen_key, self.rejected_key)


@dataclass
class TrainConfig(OptimConfig):
    """The optimisation (`OptimConfig`: batch, lr, optimizer, schedule, precision, ...) and what a train-rm run
    adds to it. Batch sizes count preference pairs (each pair is two sequences)."""

    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs for the schedule length)."""
    use_margin: bool = False
    """Subtract each pair's `margin` from the score in the loss."""
    use_soft_labels: bool = True
    """Use a pair's `label` (P(chosen > rejected)) as a soft target when present."""
    center_rewards_coefficient: float | None = None
    """BT: add c * mean((r_chosen + r_rejected)^2) to the loss, pulling the rewards towards zero mean (TRL's
    auxiliary loss, Eisenstein et al. 2023); null or 0: off."""
    eval_steps: int | None = None
    """Evaluate every N optimizer steps (and always at the end); default once per epoch."""
    keep_checkpoints: int = 2
    keep_best: bool = True
    """The final model is the one with the best eval accuracy (ties: lower eval loss)."""
    packing: bool | Literal["auto"] = "auto"
    """Padding-free batches: all sequences of a micro-batch in one row, positions restarting per sequence,
    attention kept inside each sequence (same embeddings as padding, no pad tokens computed). `auto`: on
    for causal decoders with sdpa attention (Llama, Qwen2, ...), padding for the others (e.g. BERT)."""
    share_prompt: bool | Literal["auto"] = "auto"
    """In packed batches, each pair's prompt computed once: the row holds the prompt, then each response with
    positions continuing from it, each seeing the prompt and itself only (same values, gates, loss and
    gradients as two separate sequences). auto: on wherever batches are packed; true needs packing."""
    group_by_length: bool = False
    """Batch pairs of similar length (sorted within shuffled mega-batches), so padded batches waste less;
    still deterministic in (seed, epoch), so resume stays exact."""


@dataclass
class EvaluateConfig:
    """Benchmarks run on the saved model when training ends (one process, rank 0), so that one command
    trains and scores a row of the paper's tables. Results go to output_dir/eval/ and metrics.json."""

    rewardbench: str | None = None
    """RewardBench v1: `allenai/reward-bench` or a local parquet/jsonl copy of the filtered split; null: skip."""
    rewardbench_split: str = "filtered"
    rmbench: str | None = None
    """RM-Bench: a folder of *_filtered.json files (or one file); null: skip."""
    rmbench_limit: int | None = None
    """Only the first N rows of each RM-Bench file (a quick check, not a benchmark number)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    max_length: int | None = None
    """Tokens per (prompt, response); default: data.max_length."""


@dataclass
class Recipe:
    """A `gpmctl train-rm` recipe."""

    output_dir: str = "runs/gpm"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def validate(self) -> None:
        m, d, t, e = self.model, self.data, self.train, self.evaluate
        loader.check(
            [
                (m.kind != "gpm" or (m.dim >= 2 and m.dim % 2 == 0), "model.dim", f"must be even and >= 2, got {m.dim}"),
                (
                    m.kind != "gpm_bt" or (m.dim >= 0 and m.dim % 2 == 0 and (m.dim > 0 or not m.gate)),
                    "model.dim",
                    f"gpm_bt: must be even and >= 0 (> 0 with a gate), got {m.dim}",
                ),
                (m.bt_tau > 0, "model.bt_tau", f"must be > 0, got {m.bt_tau}"),
                (not (m.kind == "bt" and m.gate), "model.gate", "a gate needs a GPM (model.kind: gpm)"),
                (m.tau is None or m.tau > 0, "model.tau", "must be > 0"),
                (m.init_std is None or m.init_std > 0, "model.init_std", "must be > 0 (or null: 1 / (hidden_size + 1))"),
                (m.lora_rank >= 0, "model.lora_rank", "must be >= 0 (0 turns LoRA off)"),
                (m.train_last_layers >= 0, "model.train_last_layers", "must be >= 0 (0: every layer trains)"),
                (
                    not (m.freeze_backbone and (m.lora_rank or m.train_last_layers)),
                    "model.freeze_backbone",
                    "excludes model.lora_rank and model.train_last_layers (a frozen backbone trains no layer)",
                ),
                (
                    not (m.freeze_backbone and self.launch.num_processes > 1),
                    "model.freeze_backbone",
                    "trains the head in one process (launch.num_processes: 1)",
                ),
                *tiny_checks(m.tiny, "model.tiny"),
                (d.train is not None, "data.train", "is required (a preference file)"),
                (0.0 <= d.eval_fraction < 1.0, "data.eval_fraction", "must be in [0, 1)"),
                (d.max_length >= 8, "data.max_length", f"must be >= 8, got {d.max_length}"),
                (d.max_samples is None or d.max_samples >= 1, "data.max_samples", "must be >= 1 (or null: every pair)"),
                (
                    len({d.prompt_key, d.chosen_key, d.rejected_key} - {None})
                    == sum(k is not None for k in (d.prompt_key, d.chosen_key, d.rejected_key)),
                    "data.prompt_key",
                    "data.prompt_key, data.chosen_key and data.rejected_key must name different input keys",
                ),
                *optimisation_checks(t),
                (
                    t.max_steps is None or t.max_steps >= 1,
                    "train.max_steps",
                    f"must be >= 1 (or null: epochs), got {t.max_steps}",
                ),
                (
                    t.max_steps is not None or t.epochs > 0,
                    "train.epochs",
                    f"must be > 0 (or set train.max_steps), got {t.epochs}",
                ),
                (t.eval_steps is None or t.eval_steps >= 1, "train.eval_steps", "must be >= 1 (or null: once per epoch)"),
                (t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1"),
                (
                    not t.center_rewards_coefficient or (m.kind == "bt" and t.center_rewards_coefficient > 0),
                    "train.center_rewards_coefficient",
                    f"needs a BT model (model.kind: bt) and a value > 0, got {t.center_rewards_coefficient}",
                ),
                (e.batch_size >= 1, "evaluate.batch_size", f"must be >= 1, got {e.batch_size}"),
                (e.max_length is None or e.max_length >= 8, "evaluate.max_length", "must be >= 8 (or null: data.max_length)"),
                (e.rmbench_limit is None or e.rmbench_limit >= 1, "evaluate.rmbench_limit", "must be >= 1 (or null: every row)"),
                *launch_checks(self.launch),
            ]
        )


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a train-rm recipe (gpmctl.config.loader.load): base overlays, `key.path=value` overrides, every
    key, type and value checked; launch settings the recipe leaves open taken from its accelerate config
    (gpmctl.config.profiles.resolve_launch)."""
    return resolve_launch(loader.load(Recipe, path, overrides))
