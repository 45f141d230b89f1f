"""The `gpmctl train-gpo` recipe: typed sections that map one to one onto YAML keys and overrides.

Read by the same loader as the train-rm recipe (gpmctl.config.loader): every field has a default, `base:`
overlays, unknown keys and wrong types are errors naming the file and the key, the resolved recipe is saved
with the run. A GPO recipe says `kind: gpo` at the top (itself or through its base), which is how listings
tell it from a train-rm one; its `train:` section shares the optimisation keys of train-rm's (OptimConfig).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpmctl.config import loader
from gpmctl.config.profiles import resolve_launch
from gpmctl.config.sections import LaunchConfig, OptimConfig, TinyBackbone, launch_checks, optimisation_checks, tiny_checks
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
    """A model gpmctl reads: a folder written by `gpmctl train-rm`, another tool's reward model, a hub id."""
    url: str | None = None
    """Instead of `model`: a running `gpmctl serve` (http://host:port) that scores for this run, so the policy and
    the judge run on different GPUs or machines. Its API key, if it needs one, comes from `api_key_env`."""
    api_key_env: str = "GPMCTL_API_KEY"
    """The environment variable holding the judge server's API key (a key is never written in a recipe)."""
    train_recipe: str | None = None
    """If `judge.model` holds no model yet, train one first with this train-rm recipe (file or shipped
    name) and `judge.train_overrides`, writing to `judge.model`."""
    train_overrides: tuple[str, ...] = ()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = 64
    max_length: int = 2048
    share_prompt: bool | Literal["auto"] = "auto"
    """Embed each prompt's K samples as one packed row holding the prompt once (same scores up to float
    rounding); auto: where the judge's backbone packs (causal decoders with sdpa attention)."""


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
class GpoTrainConfig(OptimConfig):
    """Optimisation of one iteration (the authors: RMSprop, lr 5e-7, linear, warmup 0.1, 1 epoch)."""

    batch_size: int = 8
    """Sequences per micro-batch (a pair is two)."""
    lr: float = 5e-7
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.1
    max_length: int = 1024
    """Prompt + response tokens in training; longer responses are cut (their log-prob too)."""
    save_steps: int | None = None
    """Checkpoint the iteration's optimisation every N steps (it is also checkpointed on SIGTERM/SIGUSR1);
    `--resume auto` then continues from that step instead of re-training the iteration."""


@dataclass
class GpoEvalConfig:
    """Held-out win rates after each iteration: mean over prompts of P(y_new > y_old) under the judge, and
    under an independent judge (`eval.judge`) when one is set."""

    samples: int = 4
    """Samples per held-out prompt and policy (same sampling settings as training; sample p uses seed
    `generation.seed * (p + 1) + 7_777_777` for every policy); every new sample meets every old one."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """A second judge the policy is NOT trained against (keys as `judge:`; none when model and url are unset),
    e.g. another backbone trained on other prompts: a gain that only fools the training judge shows as a
    gap between the two win rates (metrics `eval_judge_win_rate_vs_initial`, ...)."""


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
        from gpmctl.data.cyclic import ITEM_WORDS

        w, j, d, g, o, t = self.policy.warmup, self.judge, self.data, self.generation, self.objective, self.train
        loader.check(
            [
                (
                    (j.model is None) != (j.url is None),
                    "judge.model",
                    "set exactly one of judge.model (a model) and judge.url (a server)",
                ),
                *judge_checks(j, "judge"),
                (
                    self.eval.judge.model is None or self.eval.judge.url is None,
                    "eval.judge.model",
                    "set at most one of eval.judge.model (a model) and eval.judge.url (a server)",
                ),
                *judge_checks(self.eval.judge, "eval.judge"),
                (d.train is not None, "data.train", "is required (a prompt source)"),
                (d.max_prompts is None or d.max_prompts >= 1, "data.max_prompts", f"must be >= 1, got {d.max_prompts}"),
                (
                    d.max_eval_prompts is None or d.max_eval_prompts >= 1,
                    "data.max_eval_prompts",
                    f"must be >= 1, got {d.max_eval_prompts}",
                ),
                (d.max_prompt_length >= 1, "data.max_prompt_length", f"must be >= 1, got {d.max_prompt_length}"),
                (g.k >= 2, "generation.k", f"must be >= 2, got {g.k}"),
                (g.temperature > 0, "generation.temperature", f"must be > 0, got {g.temperature}"),
                (0 < g.top_p <= 1, "generation.top_p", f"must be in (0, 1], got {g.top_p}"),
                (g.max_new_tokens >= 1, "generation.max_new_tokens", "must be >= 1"),
                (g.batch_size >= 1, "generation.batch_size", f"must be >= 1, got {g.batch_size}"),
                (o.iterations >= 1, "objective.iterations", "must be >= 1"),
                (o.beta > 0, "objective.beta", "must be > 0"),
                (o.target_clamp is None or o.target_clamp > 0, "objective.target_clamp", "must be > 0"),
                *optimisation_checks(t),
                (t.epochs > 0, "train.epochs", f"must be > 0, got {t.epochs}"),
                (t.max_length >= 2, "train.max_length", f"must be >= 2 (prompt and response tokens), got {t.max_length}"),
                *tiny_checks(self.policy.tiny, "policy.tiny"),
                (w.steps >= 0, "policy.warmup.steps", f"must be >= 0, got {w.steps}"),
                (w.lr > 0, "policy.warmup.lr", f"must be > 0, got {w.lr}"),
                (w.batch_size >= 1, "policy.warmup.batch_size", f"must be >= 1, got {w.batch_size}"),
                (
                    2 <= w.num_items <= len(ITEM_WORDS),
                    "policy.warmup.num_items",
                    f"must be in [2, {len(ITEM_WORDS)}], got {w.num_items}",
                ),
                (
                    w.item_weights is None or len(w.item_weights) == w.num_items,
                    "policy.warmup.item_weights",
                    f"needs {w.num_items} weights (policy.warmup.num_items)",
                ),
                (
                    w.item_weights is None or (min(w.item_weights) >= 0 and sum(w.item_weights) > 0),
                    "policy.warmup.item_weights",
                    "must be >= 0 and not all 0",
                ),
                (
                    w.steps == 0 or self.policy.model == "tiny",
                    "policy.warmup.steps",
                    "the cyclic warm-up is for policy.model: tiny",
                ),
                (self.eval.samples >= 1, "eval.samples", "must be >= 1"),
                *launch_checks(self.launch),
            ]
        )


def judge_checks(j: JudgeConfig, key: str) -> list[tuple[bool, str, str]]:
    """The checks of one judge section (`judge`, `eval.judge`), for loader.check."""
    return [
        (j.url is None or j.url.startswith(("http://", "https://")), f"{key}.url", f"expected http://host:port, got {j.url!r}"),
        (j.batch_size >= 1, f"{key}.batch_size", f"must be >= 1, got {j.batch_size}"),
        (j.max_length >= 8, f"{key}.max_length", f"must be >= 8, got {j.max_length}"),
    ]


def is_gpo_recipe(path: str | Path) -> bool:
    """A recipe file that says `kind: gpo`, itself or through its `base:` chain (or is named gpo_*.yaml)."""
    return Path(path).name.startswith("gpo_") or loader.recipe_kind(path) == "gpo"


def load_gpo_recipe(path: str | Path | None, overrides: list[str] = ()) -> GpoRecipe:
    """Read a GPO recipe (gpmctl.config.loader.load, as train-rm's): base overlays, `key.path=value`
    overrides, every key, type and value checked; launch settings the recipe leaves open taken from its
    accelerate config (gpmctl.config.profiles.resolve_launch)."""
    return resolve_launch(loader.load(GpoRecipe, path, overrides))


def check_policy(recipe: GpoRecipe) -> None:
    """Before a run writes anything: a local policy.model folder holds weights gpmctl may read (never
    only pickles). Problems name the GPO recipe file and the key."""
    from gpmctl.errors import ModelError
    from gpmctl.models.sources import refuse_pickles

    folder = Path(recipe.policy.model)
    if recipe.policy.model != "tiny" and folder.is_dir():
        try:
            refuse_pickles(folder)
        except ModelError as e:
            raise ModelError(f"{getattr(recipe, 'source', 'recipe')}: policy.model: {e}") from None


def check_judge(recipe: GpoRecipe) -> None:
    """Before a run writes anything: judge.model (and eval.judge.model, if set) holds a gpmctl model, or its
    train_recipe is a train-rm recipe that can make one there. Problems name the GPO recipe file and the key."""
    check_judge_section(recipe, recipe.judge, "judge")
    if recipe.eval.judge.model is not None:
        check_judge_section(recipe, recipe.eval.judge, "eval.judge")


def check_judge_section(recipe: GpoRecipe, j: JudgeConfig, key: str) -> None:
    from gpmctl.config import load_recipe, resolve_recipe
    from gpmctl.models.heads import HEAD_FILE
    from gpmctl.models.io import holds_model, names_source

    source = getattr(recipe, "source", "recipe")
    if j.url is not None or (Path(j.model).is_dir() and holds_model(j.model)):
        return
    if j.train_recipe is None and names_source(str(j.model)):
        return  # fetched when the run starts (a missing one is then a one-line ModelError)
    if j.train_recipe is None:
        raise ConfigError(
            f"{source}: {key}.model: {j.model} holds no gpmctl model ({HEAD_FILE}); "
            f"train one (gpmctl train-rm RECIPE output_dir={j.model}) or set {key}.train_recipe"
        )
    try:
        load_recipe(resolve_recipe(j.train_recipe), [*j.train_overrides, f"output_dir={j.model}"])
    except ConfigError as e:
        raise ConfigError(f"{source}: {key}.train_recipe: {e}") from None
