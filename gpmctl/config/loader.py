"""One typed loader for every kind of recipe: YAML -> dataclasses, with errors that name the file and key.

    load(Recipe, "my.yaml", ["train.lr=1e-5"])      a train-rm recipe (gpmctl.config.train_rm.Recipe)
    load(GpoRecipe, "gpo.yaml")                     a train-gpo recipe (gpmctl.config.train_gpo.GpoRecipe)

What every recipe kind gets from here, in this order:
  1. the file's top-level mapping (`read_yaml_mapping`: missing file, bad UTF-8 and bad YAML name file and line)
  2. `base: NAME` overlays (`with_base`): the base recipe (a file beside this one, or a shipped recipe)
     supplies every key the overlay does not set; mappings merge key by key; chains and cycles are checked
  3. `key.path=value` overrides (`parse_override`, `apply_override`), each value read as YAML; TRL / OpenRLHF
     names (`learning_rate`, `bf16`, `max_len`, ...) are applied as the gpmctl keys they mean (`FOREIGN_NAMES`)
  4. typed construction (`build`): unknown keys get a suggestion (the gpmctl key a TRL / OpenRLHF name stands
     for, or a close name), values are checked against the annotations
  5. the schema's own `validate()` (value ranges), and `recipe.source` = the file, for run-time errors, and
     `recipe.set_by` = {key: "recipe" or "command line"} for each key given (what a default must not replace)
`dump_recipe` writes the resolved recipe back as YAML (saved as recipe.yaml with every run); it loads
again to the same recipe. Shipped recipes (`recipes/*.yaml`, packaged as `gpmctl.recipes`) are found by
name (`resolve_recipe`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from gpmctl.errors import ConfigError


def load(schema: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    """Read a recipe of `schema` (a dataclass with a `validate()` method) from `path` (or only from the
    overrides when None), apply the overrides, check every key, type and value."""
    values: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        values = with_base(read_yaml_mapping(path), Path(path))
    set_by = dict.fromkeys(_leaf_keys(values), "recipe")
    for text in overrides:
        try:
            key, value = translate_override(*parse_override(text), schema)
            apply_override(values, key, value, cls=schema)
        except ConfigError as e:  # the recipe it applies to, and that the key came from the command line
            raise ConfigError(f"{source}: command-line override {text!r}: {e}") from None
        set_by.update(dict.fromkeys(_leaf_keys(value, key) if isinstance(value, dict) else [key], "command line"))
    try:
        recipe = build(schema, values)
        recipe.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    recipe.source = source  # not a field (never saved): errors found later, at run time, name the file too
    recipe.set_by = set_by  # not a field: which keys the recipe or the command line set ("recipe" / "command line")
    return recipe


def _leaf_keys(values: dict, prefix: str = "") -> list[str]:
    """`a.b.c` for every value of a nested mapping that is not itself a mapping."""
    keys = []
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        keys += _leaf_keys(value, key) if isinstance(value, dict) else [key]
    return keys


def recipe_kind(path: str | Path) -> str | None:
    """The `kind:` a recipe file declares, itself or through its `base:` chain (None: a train-rm recipe)."""
    try:
        values = with_base(read_yaml_mapping(path), Path(path))
    except ConfigError:
        return None
    return values.get("kind")


def check(checks: list[tuple[bool, str, str]]) -> None:
    """Raise `key: problem` (a ConfigError; the loader adds the file) for the first failed (ok, key, problem)."""
    for ok, key, problem in checks:
        if not ok:
            raise ConfigError(f"{key}: {problem}")


# ----------------------------------------------------------------------------------------------------
# YAML and overrides -> dataclasses, with errors that name the key.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
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
                return coerce(value, option, key)
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
        return origin(coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
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


def build(cls: type, values: dict, prefix: str = "") -> Any:
    """The dataclass `cls` from a mapping of its fields (nested dataclasses from nested mappings)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(_unknown_key(prefix + str(name), [prefix + n for n in names]))
        kwargs[name] = coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def _flag(on: str, off: str):
    """A foreign boolean flag -> the value of the gpmctl key it sets (`bf16: true` -> `train.precision: bf16`)."""
    return lambda value: on if value is True or str(value).lower() == "true" else off


FOREIGN_NAMES: dict[str, tuple[tuple[str, ...], Any]] = {
    # TRL / transformers TrainingArguments
    "learning_rate": (("train.lr",), None),
    "per_device_train_batch_size": (("train.batch_size",), None),
    "gradient_accumulation_steps": (("train.grad_accum",), None),
    "num_train_epochs": (("train.epochs",), None),
    "max_steps": (("train.max_steps",), None),
    "max_length": (("data.max_length", "train.max_length"), None),
    "bf16": (("train.precision",), _flag("bf16", "fp32")),
    "fp16": (("train.precision",), _flag("fp16", "fp32")),
    "gradient_checkpointing": (("model.gradient_checkpointing", "policy.gradient_checkpointing"), None),
    "warmup_ratio": (("train.warmup_ratio",), None),
    "weight_decay": (("train.weight_decay",), None),
    "max_grad_norm": (("train.max_grad_norm",), None),
    "lr_scheduler_type": (("train.scheduler",), None),
    "logging_steps": (("train.logging_steps",), None),
    "save_steps": (("train.save_steps",), None),
    "eval_steps": (("train.eval_steps",), None),
    "seed": (("train.seed",), None),
    "output_dir": (("output_dir",), None),
    "model_name_or_path": (("model.backbone", "policy.model"), None),
    "lora_r": (("model.lora_rank",), None),
    "lora_alpha": (("model.lora_alpha",), None),
    "lora_dropout": (("model.lora_dropout",), None),
    "lora_target_modules": (("model.lora_target_modules",), None),
    "center_rewards_coefficient": (("train.center_rewards_coefficient",), None),
    "report_to": (("train.report_to",), None),
    # OpenRLHF train_rm / the authors' scripts
    "micro_train_batch_size": (("train.batch_size",), None),
    "accumulated_gradient": (("train.grad_accum",), None),
    "max_epochs": (("train.epochs",), None),
    "max_len": (("data.max_length", "train.max_length"), None),
    "max_norm": (("train.max_grad_norm",), None),
    "l2": (("train.weight_decay",), None),
    "lora_rank": (("model.lora_rank",), None),
    "save_path": (("output_dir",), None),
    "pretrain": (("model.backbone", "policy.model"), None),
    "dataset": (("data.train",), None),
    "eval_dataset": (("data.eval",), None),
    "value_head_dim": (("model.dim",), None),
    "general_preference_tau": (("model.tau",), None),
    "add_prompt_head": (("model.gate",), None),
    "is_general_preference": (("model.kind",), _flag("gpm", "bt")),
    "warmup": (("train.warmup_ratio",), None),
    "prompt_key": (("data.prompt_key",), None),
    "chosen_key": (("data.chosen_key",), None),
    "rejected_key": (("data.rejected_key",), None),
}
"""Names users bring from TRL / transformers, OpenRLHF and the authors' scripts -> (the gpmctl keys they mean,
the first one the schema has is taken; how the value translates, None: as is). As an override, bare or under
any section (`learning_rate=1e-5`, `train.learning_rate=1e-5`, `bf16=true`), such a name is applied as its
gpmctl key with a log line; in a recipe file it is an unknown key whose message names the gpmctl key."""


def _foreign_target(name: str, known) -> tuple[str, Any] | None:
    """(gpmctl key, value translation) that a foreign `name` stands for in a schema with keys `known`."""
    targets, convert = FOREIGN_NAMES.get(name, ((), None))
    target = next((t for t in targets if t in known), None)
    return (target, convert) if target else None


def translate_override(key: str, value: Any, schema: type) -> tuple[str, Any]:
    """A command-line override under a TRL / OpenRLHF name -> the gpmctl key and value (logged); others as given."""
    known = set(_all_keys(schema))
    if key in known:
        return key, value
    found = _foreign_target(key.rpartition(".")[2], known)
    if found is None:
        return key, value
    target, convert = found
    translated = convert(value) if convert else value
    from gpmctl.utils import log

    log(f"override {key}={value} is the TRL/OpenRLHF name of {target}: {target}={translated}")
    return target, translated


def _unknown_key(key: str, known: list[str]) -> str:
    found = _foreign_target(key.rpartition(".")[2], set(known))
    if found:
        target, convert = found
        hint = f" (the TRL/OpenRLHF name of {target}: write {target}: {convert(True) if convert else '...'})"
    else:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        section = key.rpartition(".")[0]
        here = [k.rsplit(".", 1)[-1] for k in known if k.rpartition(".")[0] == section] or [k.rsplit(".", 1)[-1] for k in known]
        hint = f" (did you mean {close[0]}?)" if close else f" (known here: {', '.join(here)})"
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


def apply_override(values: dict, key: str, value: Any, cls: type) -> None:
    """Set `values[a][b][c] = value` for key `a.b.c`, checking each part names a field of the schema `cls`."""
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


def with_base(values: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
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
    return merge(with_base(base_values, base_path, chain), values)


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
    checkout = Path(__file__).resolve().parents[2] / "recipes"
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
