"""Typed recipes: dataclasses that map one to one onto YAML keys and `key.path=value` overrides.

A recipe file is YAML with the sections below; every field has a default, so a recipe names only what
it changes. `base: NAME` makes a file an overlay on another recipe (see `_with_base`). Unknown keys and wrong types are errors that name the file and the key (with a close-match
suggestion). The fully resolved recipe is saved with every run (`recipe.yaml` in the output folder).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gpmctl.errors import ConfigError


@dataclass
class TinyBackbone:
    """Shape of the embedded default backbone (`model.backbone: tiny`): a Llama built from a config."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    """Std of the random weights. Larger than a big model's 0.02 so features of different texts differ
    at initialisation: a balanced cyclic dataset is a saddle point for collapsed embeddings."""


@dataclass
class ModelConfig:
    """The backbone and the preference head; everything here is saved with the trained model."""

    backbone: str = "tiny"
    """`tiny` (built from `model.tiny`, offline), a local folder, or a Hugging Face model id."""
    tokenizer: str | None = None
    """Tokenizer folder or id; default: the backbone's own (the shipped tiny tokenizer for `tiny`)."""
    kind: Literal["gpm", "bt"] = "gpm"
    """`gpm`: preference embedding in R^dim with the skew-symmetric operator; `bt`: scalar reward."""
    dim: int = 2
    """GPM embedding dimension 2k (even). Ignored for BT."""
    gate: bool = False
    """Prompt-dependent eigenvalue gate (softmax over the k blocks, read at the end of the prompt)."""
    gate_variant: Literal["softmax", "scaled_softmax"] = "softmax"
    """`softmax` as in the released checkpoints; `scaled_softmax` = k * softmax(logits / sqrt(hidden))."""
    l2: bool = True
    """L2-normalise the GPM embedding (paper section 4.2)."""
    tau: float | None = None
    """Temperature: P = sigmoid(s / tau). Default 0.1 for GPM, 1.0 for BT (the paper's settings)."""
    pool: Literal["last", "first"] = "last"
    """Token whose hidden state gives the embedding: the last real token (decoders) or the first (CLS)."""
    eos: Literal["overwrite", "append", "none"] = "overwrite"
    """`overwrite`: the last token becomes EOS (the reference code); `append`: add EOS if missing."""
    gate_prompt: Literal["first_turn", "full_prompt"] = "first_turn"
    """Where the gate reads the prompt: end of the first user turn (reference) or of the whole prompt."""
    init_std: float | None = None
    """Std of the head initialisation; default 1 / (hidden_size + 1) as in the reference."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype when loading; `auto` = float32 on CPU, bfloat16 on a bf16-capable GPU. Training keeps the
    weights it updates in float32 (bf16 compute comes from train.precision's autocast), except under DeepSpeed
    mixed precision, whose optimizer holds fp32 master copies itself."""
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
        return self.tau if self.tau is not None else (0.1 if self.kind == "gpm" else 1.0)


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


@dataclass
class TrainConfig:
    """The optimisation. Batch sizes count preference pairs (each pair is two sequences)."""

    epochs: float = 1.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs for the schedule length)."""
    batch_size: int = 8
    """Pairs per device per micro-batch."""
    grad_accum: int = 1
    lr: float = 2e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = 0.03
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """`auto`: bf16 mixed precision on a bf16-capable GPU, fp32 on CPU (bf16 is slower there). Mixed precision
    runs the forward in autocast over float32 weights and optimizer state; fp16 needs a CUDA GPU."""
    seed: int = 42
    use_margin: bool = False
    """Subtract each pair's `margin` from the score in the loss."""
    use_soft_labels: bool = True
    """Use a pair's `label` (P(chosen > rejected)) as a soft target when present."""
    logging_steps: int = 10
    eval_steps: int | None = None
    """Evaluate every N optimizer steps (and always at the end); default once per epoch."""
    save_steps: int | None = None
    """Write a resumable checkpoint every N optimizer steps (and on SIGTERM/SIGUSR1)."""
    keep_checkpoints: int = 2
    keep_best: bool = True
    """The final model is the one with the best eval accuracy (ties: lower eval loss)."""
    packing: bool | Literal["auto"] = "auto"
    """Padding-free batches: all sequences of a micro-batch in one row, positions restarting per sequence,
    attention kept inside each sequence (same embeddings as padding, no pad tokens computed). `auto`: on
    for causal decoders with sdpa attention (Llama, Qwen2, ...), padding for the others (e.g. BERT)."""
    group_by_length: bool = False
    """Batch pairs of similar length (sorted within shuffled mega-batches), so padded batches waste less;
    still deterministic in (seed, epoch), so resume stays exact."""


@dataclass
class LaunchConfig:
    """How many processes run the recipe and with which distributed engine (see gpmctl/launch.py)."""

    profile: str = "single"
    """An accelerate config: a shipped profile (single, ddp, zero2, zero3, zero3_offload; `gpmctl recipes ls`)
    or a path to your own YAML. With more than one process gpmctl re-runs itself under `accelerate launch`."""
    num_processes: int = 1
    """Processes in all, over all machines (one per GPU). The global batch is batch_size x grad_accum x this."""
    num_machines: int = 1
    """Machines (nodes). More than one needs a launcher per machine: see recipes/slurm/."""
    main_process_port: int | None = None
    """Rendezvous port; default: MASTER_PORT if set, else a free port (one machine) or 29500."""


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
        check([
            (m.kind == "bt" or (m.dim >= 2 and m.dim % 2 == 0), "model.dim", f"must be even and >= 2, got {m.dim}"),
            (not (m.kind == "bt" and m.gate), "model.gate", "a gate needs a GPM (model.kind: gpm)"),
            (m.tau is None or m.tau > 0, "model.tau", "must be > 0"),
            (m.init_std is None or m.init_std > 0, "model.init_std", "must be > 0 (or null: 1 / (hidden_size + 1))"),
            (m.lora_rank >= 0, "model.lora_rank", "must be >= 0 (0 turns LoRA off)"),
            (m.train_last_layers >= 0, "model.train_last_layers", "must be >= 0 (0: every layer trains)"),
            (not (m.freeze_backbone and (m.lora_rank or m.train_last_layers)), "model.freeze_backbone",
             "excludes model.lora_rank and model.train_last_layers (a frozen backbone trains no layer)"),
            (not (m.freeze_backbone and self.launch.num_processes > 1), "model.freeze_backbone",
             "trains the head in one process (launch.num_processes: 1)"),
            *tiny_checks(m.tiny, "model.tiny"),
            (d.train is not None, "data.train", "is required (a preference file)"),
            (0.0 <= d.eval_fraction < 1.0, "data.eval_fraction", "must be in [0, 1)"),
            (d.max_length >= 8, "data.max_length", f"must be >= 8, got {d.max_length}"),
            (d.max_samples is None or d.max_samples >= 1, "data.max_samples", "must be >= 1 (or null: every pair)"),
            *optimisation_checks(t),
            (t.max_steps is None or t.max_steps >= 1, "train.max_steps", f"must be >= 1 (or null: epochs), got {t.max_steps}"),
            (t.max_steps is not None or t.epochs > 0, "train.epochs", f"must be > 0 (or set train.max_steps), got {t.epochs}"),
            (t.eval_steps is None or t.eval_steps >= 1, "train.eval_steps", "must be >= 1 (or null: once per epoch)"),
            (t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1"),
            (all(0.0 <= b < 1.0 for b in t.adam_betas), "train.adam_betas", "must be in [0, 1)"),
            (e.batch_size >= 1, "evaluate.batch_size", f"must be >= 1, got {e.batch_size}"),
            (e.max_length is None or e.max_length >= 8, "evaluate.max_length", "must be >= 8 (or null: data.max_length)"),
            (e.rmbench_limit is None or e.rmbench_limit >= 1, "evaluate.rmbench_limit", "must be >= 1 (or null: every row)"),
            *launch_checks(self.launch),
        ])  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Value checks shared by the train-rm and train-gpo recipes (gpmctl/train/gpo_config.py).


def check(checks: list[tuple[bool, str, str]]) -> None:
    """Raise `key: problem` (a ConfigError; the loader adds the file) for the first failed (ok, key, problem)."""
    for ok, key, problem in checks:
        if not ok:
            raise ConfigError(f"{key}: {problem}")


def optimisation_checks(t: Any) -> list[tuple[bool, str, str]]:
    """The fields both recipes' `train` sections have, under the same names and meaning."""
    return [
        (t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}"),
        (t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}"),
        (t.lr > 0, "train.lr", f"must be > 0, got {t.lr}"),
        (t.weight_decay >= 0, "train.weight_decay", "must be >= 0"),
        (0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)"),
        (t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0: no clipping)"),
        (t.logging_steps >= 1, "train.logging_steps", f"must be >= 1, got {t.logging_steps}"),
        (t.save_steps is None or t.save_steps >= 1, "train.save_steps", f"must be >= 1 (or null: on a stop signal), got {t.save_steps}"),
    ]  # fmt: skip


def tiny_checks(shape: TinyBackbone, key: str) -> list[tuple[bool, str, str]]:
    sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_position_embeddings")
    return [
        *((getattr(shape, name) >= 1, f"{key}.{name}", f"must be >= 1, got {getattr(shape, name)}") for name in sizes),
        (shape.hidden_size % max(shape.num_heads, 1) == 0, f"{key}.hidden_size", "must be a multiple of num_heads"),
        (shape.num_heads % max(shape.num_kv_heads, 1) == 0, f"{key}.num_heads", "must be a multiple of num_kv_heads"),
        (shape.initializer_range > 0, f"{key}.initializer_range", "must be > 0"),
    ]


def launch_checks(launch: LaunchConfig) -> list[tuple[bool, str, str]]:
    return [
        (launch.num_processes >= 1, "launch.num_processes", "must be >= 1"),
        (launch.num_machines >= 1 and launch.num_processes % launch.num_machines == 0,
         "launch.num_machines", "must be >= 1 and divide launch.num_processes"),
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# YAML and overrides -> dataclasses, with errors that name the key.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) `value` against the annotation `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item_types = args if origin is tuple and args and args[-1] is not Ellipsis else [args[0] if args else Any] * len(value)
        return origin(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 2e-6 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # no recipe number means anything as inf or nan (lr=.inf trains NaN weights)
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(_unknown_key(prefix + str(name), [prefix + n for n in names]))
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


# Names users bring from TRL, transformers and the authors' scripts -> the recipe's own field.
_ALIASES = {
    "learning_rate": "lr", "gradient_accumulation_steps": "grad_accum", "accumulated_gradient": "grad_accum",
    "num_train_epochs": "epochs", "max_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "micro_train_batch_size": "batch_size", "max_len": "max_length", "value_head_dim": "dim",
    "general_preference_tau": "tau", "add_prompt_head": "gate", "warmup": "warmup_ratio",
    "max_norm": "max_grad_norm", "l2": "weight_decay", "save_path": "output_dir", "pretrain": "backbone",
}  # fmt: skip


def _unknown_key(key: str, known: list[str]) -> str:
    section, _, name = key.rpartition(".")
    alias = f"{section}.{_ALIASES[name]}" if section and name in _ALIASES else _ALIASES.get(name)
    close = [alias] if alias in known else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(k.rsplit('.', 1)[-1] for k in known)})"
    return f"unknown key {key}{hint}"


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, prefix + f.name + ".")
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-5` -> ("train.lr", 1e-5); the value is read as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(values: dict, key: str, value: Any, cls: type = Recipe) -> None:
    """Set `values[a][b][c] = value` for key `a.b.c`, checking each part names a recipe field."""
    parts = key.split(".")
    node, tp = values, cls
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            raise ConfigError(_unknown_key(key, _all_keys(cls)))
        if i == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node, tp = child, hints[part]


def read_yaml_mapping(path: str | Path) -> dict:
    """A recipe file's top-level mapping; a missing file or bad YAML is a ConfigError naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the recipe as UTF-8") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(values).__name__}")
    return values


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe, apply `key.path=value` overrides, check every key and type."""
    values: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        values = _with_base(read_yaml_mapping(path), Path(path))
    try:
        for text in overrides:
            apply_override(values, *parse_override(text))
        recipe = _build(Recipe, values)
        recipe.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    recipe.source = source  # not a field (never saved): errors found later, at run time, name the file too
    return recipe


def _with_base(values: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """An overlay recipe: `base: NAME` (a file next to this one, or a shipped recipe) supplies every key
    the overlay does not set; mappings merge key by key. The saved recipe.yaml is the merged result."""
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a recipe file or shipped recipe name, got {base!r}")
    nearby = path.parent / base
    try:
        base_path = nearby if nearby.is_file() else resolve_recipe(base)
    except ConfigError as e:
        raise ConfigError(f"{path}: base: {e}") from None
    chain = (*seen, path.resolve())
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: base: {base} includes this recipe again ({' -> '.join(p.name for p in (*chain, base_path))})")

    def merge(under: dict, over: dict) -> dict:
        out = dict(under)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    try:
        base_values = read_yaml_mapping(base_path)
    except ConfigError as e:
        raise ConfigError(f"{path}: base: {e}") from None
    return merge(_with_base(base_values, base_path, chain), values)


def recipe_to_dict(recipe: Any) -> dict:
    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return list(x)
        return x

    return {k: (recipe_to_dict(v) if dataclasses.is_dataclass(v) else plain(v)) for k, v in dataclasses.asdict(recipe).items()}


def dump_recipe(recipe: Any) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


# ----------------------------------------------------------------------------------------------------
# Shipped recipes: `recipes/*.yaml` in a checkout, packaged as `gpmctl.recipes` in a wheel.


def shipped_recipes() -> dict[str, Path]:
    """Name -> path of every recipe shipped with gpmctl."""
    import importlib.resources

    found: dict[str, Path] = {}
    checkout = Path(__file__).resolve().parent.parent / "recipes"
    entries = list(checkout.glob("*.yaml")) if checkout.is_dir() else []
    try:  # an installed wheel: gpmctl/recipes/*.yaml
        entries += [Path(str(e)) for e in importlib.resources.files("gpmctl.recipes").iterdir()]
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    for path in sorted(entries, key=lambda p: p.name):
        if path.suffix == ".yaml":
            found.setdefault(path.stem, path)
    return found


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file path, or the name of a shipped recipe (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and stem in shipped:
        return shipped[stem]
    close = difflib.get_close_matches(stem, list(shipped), n=1)
    hint = f" (did you mean the shipped recipe {close[0]}?)" if close else ""
    raise ConfigError(f"{name_or_path}: no such recipe file{hint}")
