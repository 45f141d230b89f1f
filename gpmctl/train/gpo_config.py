"""The `gpmctl train-gpo` recipe: typed sections that map one to one onto YAML keys and overrides.

Same rules as the train-rm recipe (gpmctl.config): every field has a default, unknown keys and wrong
types are errors naming the file and the key, the resolved recipe is saved with the run. A GPO
recipe says `kind: gpo` at the top, which is how shipped-recipe listings tell it from a train-rm one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from gpmctl.config import LaunchConfig, TinyBackbone, _build, apply_override, parse_override, read_yaml_mapping
from gpmctl.errors import ConfigError


@dataclass
class WarmupConfig:
    """Supervised warm-up of a `tiny` policy so it answers cyclic prompts with item words (pi_0)."""

    steps: int = 0
    """SFT steps on (prompt -> item word); 0 = no warm-up (a pretrained policy needs none)."""
    lr: float = 3e-3
    batch_size: int = 32
    num_items: int = 12
    """Item words of the cyclic task (gpmctl.data.cyclic.ITEM_WORDS[:num_items])."""
    item_weights: tuple[float, ...] | None = None
    """Relative frequency of each item word in the warm-up answers; default uniform. Uniform is the
    equilibrium of the circle game (every item wins half the time against it), so nothing can beat
    it: a skewed pi_0 makes improvement measurable."""


@dataclass
class PolicyConfig:
    """The policy pi_0 that GPO starts from; iteration t writes pi_t as a Hugging Face causal-LM folder."""

    model: str = "tiny"
    """`tiny` (a small Llama built from `policy.tiny`, warm-started by `policy.warmup`), a folder or hub id."""
    tokenizer: str | None = None
    """Default: the model's own (the shipped tiny tokenizer for `tiny`)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = "sdpa"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    tiny: TinyBackbone = field(default_factory=TinyBackbone)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)


@dataclass
class JudgeConfig:
    """The preference model that scores the generations: a gpmctl model folder (GPM or BT)."""

    model: str | None = None
    """Folder written by `gpmctl train-rm`."""
    train_recipe: str | None = None
    """If `judge.model` holds no model yet, train one first with this train-rm recipe (file or shipped
    name) and `judge.train_overrides`, writing to `judge.model`."""
    train_overrides: tuple[str, ...] = ()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = 64
    max_length: int = 2048


@dataclass
class PromptsConfig:
    """Prompts to generate from. Any `gpmctl data` source (prompts are de-duplicated) or a jsonl of
    `{"prompt": text | messages}` rows."""

    train: str | None = None
    eval: str | None = None
    """Held-out prompts for the win rates after each iteration."""
    max_prompts: int | None = None
    max_eval_prompts: int | None = None
    max_prompt_length: int = 512
    """Prompts longer than this (in policy tokens) keep their last tokens."""


@dataclass
class GenerationConfig:
    """Sampling of the K responses per prompt (and of the evaluation samples)."""

    k: int = 5
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 2048
    seed: int = 50
    """Sample p of iteration t uses seed `seed * (p + 1) + 1_000_003 * t` (the authors: 50 * p)."""
    batch_size: int = 16
    """Prompts per generate call (Hugging Face `generate`; vLLM is not wired in yet)."""


@dataclass
class ObjectiveConfig:
    """What each iteration optimises (gpm_paper.md section 9.1)."""

    iterations: int = 3
    loss: Literal["gpo", "sppo"] = "gpo"
    """`gpo`: target (1/beta) mean_j s(y > y_j) (eq. 5.2-5.3); `sppo`: (1/beta)(mean_j P(y > y_j) - 1/2)."""
    beta: float = 0.001
    train_on: Literal["pairs", "all"] = "pairs"
    """`pairs`: per prompt the best and the worst of the K by aggregate score (the authors' pipeline);
    `all`: every one of the K samples (the expectation over y ~ pi_t of eq. 5.3, unbiased)."""
    score_table: Literal["logit", "authors"] = "logit"
    """`logit`: s_ij = log-odds of the judge, P(y_i > y_j) = sigmoid(s_ij) (s/tau of the head);
    `authors`: T_ij - T_ji = 2 s/tau, as the authors' compute_score_from_raw (SPPO then uses sigmoid of it)."""
    length_norm: bool = False
    """LN-GPO (App. E.2): divide the log-ratio by |y|^length_gamma."""
    length_gamma: float = 1.0
    target_clamp: float | None = None
    """Clamp the regression target to [-c, c] (the authors export CLAMP_THRES=1000)."""


@dataclass
class GpoTrainConfig:
    """Optimisation of one iteration (the authors: RMSprop, lr 5e-7, linear, warmup 0.1, 1 epoch)."""

    epochs: float = 1.0
    batch_size: int = 8
    """Sequences per micro-batch (a pair is two)."""
    grad_accum: int = 1
    lr: float = 5e-7
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    weight_decay: float = 0.0
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 42
    max_length: int = 1024
    """Prompt + response tokens in training; longer responses are cut (their log-prob too)."""
    logging_steps: int = 10
    save_steps: int | None = None
    """Checkpoint the iteration's optimisation every N steps (it is also checkpointed on SIGTERM/SIGUSR1);
    `--resume auto` then continues from that step instead of re-training the iteration."""


@dataclass
class GpoEvalConfig:
    """Held-out win rates after each iteration: mean over prompts of P(y_new > y_old) under the judge."""

    samples: int = 4
    """Samples per held-out prompt and policy (same sampling settings as training; sample p uses seed
    `generation.seed * (p + 1) + 7_777_777` for every policy); every new sample meets every old one."""


@dataclass
class GpoRecipe:
    """A `gpmctl train-gpo` recipe."""

    kind: Literal["gpo"] = "gpo"
    output_dir: str = "runs/gpo"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    data: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: GpoTrainConfig = field(default_factory=GpoTrainConfig)
    eval: GpoEvalConfig = field(default_factory=GpoEvalConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    """As train-rm: with more than one process gpmctl re-runs itself under `accelerate launch`."""

    def validate(self) -> None:
        w, g, o, t = self.policy.warmup, self.generation, self.objective, self.train
        checks = [
            (self.judge.model is not None, "judge.model", "is required (a gpmctl model folder)"),
            (self.data.train is not None, "data.train", "is required (a prompt source)"),
            (g.k >= 2, "generation.k", f"must be >= 2, got {g.k}"),
            (g.temperature > 0 and 0 < g.top_p <= 1, "generation.temperature", "temperature must be > 0 and top_p in (0, 1]"),
            (g.max_new_tokens >= 1, "generation.max_new_tokens", "must be >= 1"),
            (o.iterations >= 1, "objective.iterations", "must be >= 1"),
            (o.beta > 0, "objective.beta", "must be > 0"),
            (o.target_clamp is None or o.target_clamp > 0, "objective.target_clamp", "must be > 0"),
            (t.lr > 0 and t.epochs > 0, "train.lr", "lr and epochs must be > 0"),
            (t.batch_size >= 1 and t.grad_accum >= 1, "train.batch_size", "batch_size and grad_accum must be >= 1"),
            (0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)"),
            (w.item_weights is None or len(w.item_weights) == w.num_items, "policy.warmup.item_weights",
             f"needs {w.num_items} weights (policy.warmup.num_items)"),
            (w.item_weights is None or (min(w.item_weights) >= 0 and sum(w.item_weights) > 0), "policy.warmup.item_weights",
             "must be >= 0 and not all 0"),
            (w.steps == 0 or self.policy.model == "tiny", "policy.warmup.steps", "the cyclic warm-up is for policy.model: tiny"),
            (self.eval.samples >= 1, "eval.samples", "must be >= 1"),
            (self.launch.num_processes >= 1, "launch.num_processes", "must be >= 1"),
            (self.launch.num_machines >= 1 and self.launch.num_processes % self.launch.num_machines == 0,
             "launch.num_machines", "must be >= 1 and divide launch.num_processes"),
        ]  # fmt: skip
        for ok, key, problem in checks:
            if not ok:
                raise ConfigError(f"{key}: {problem}")


def is_gpo_recipe(path: str | Path) -> bool:
    """A recipe file that says `kind: gpo` (or is named gpo_*.yaml)."""
    path = Path(path)
    if path.name.startswith("gpo_"):
        return True
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(values, dict) and values.get("kind") == "gpo"


def load_gpo_recipe(path: str | Path | None, overrides: list[str] = ()) -> GpoRecipe:
    """Read a GPO recipe, apply `key.path=value` overrides, check every key and type."""
    values: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        values = read_yaml_mapping(path)
    try:
        for text in overrides:
            apply_override(values, *parse_override(text), cls=GpoRecipe)
        recipe = _build(GpoRecipe, values)
        recipe.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return recipe
