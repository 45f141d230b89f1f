"""One typed loader for every kind of recipe: YAML -> dataclasses, with errors that name the file and key.

    load(Recipe, "my.yaml", ["train.lr=1e-5"])      a train-rm recipe (gpmctl.config.train_rm.Recipe)
    load(GpoRecipe, "gpo.yaml")                     a train-gpo recipe (gpmctl.config.train_gpo.GpoRecipe)

What every recipe kind gets from here, in this order:
  1. the file's top-level mapping (`read_yaml_mapping`: missing file, bad UTF-8 and bad YAML name file and line)
  2. `base: NAME` overlays (`with_base`): the base recipe (a file beside this one, or a shipped recipe)
     supplies every key the overlay does not set; mappings merge key by key; chains and cycles are checked
  3. `key.path=value` overrides (`parse_override`, `apply_override`), each value read as YAML
  4. typed construction (`build`): unknown keys get a suggestion (a close name, or the gpmctl key a TRL /
     OpenRLHF / reference-code name stands for: `ALIASES`), values are checked against the annotations
  5. the schema's own `validate()` (value ranges), and `recipe.source` = the file, for run-time errors
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
    try:
        for text in overrides:
            apply_override(values, *parse_override(text), cls=schema)
        recipe = build(schema, values)
        recipe.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    recipe.source = source  # not a field (never saved): errors found later, at run time, name the file too
    return recipe


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


ALIASES = {
    "learning_rate": "lr",
    "gradient_accumulation_steps": "grad_accum",
    "accumulated_gradient": "grad_accum",
    "num_train_epochs": "epochs",
    "max_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "micro_train_batch_size": "batch_size",
    "max_len": "max_length",
    "value_head_dim": "dim",
    "general_preference_tau": "tau",
    "add_prompt_head": "gate",
    "warmup": "warmup_ratio",
    "max_norm": "max_grad_norm",
    "l2": "weight_decay",
    "save_path": "output_dir",
    "pretrain": "backbone",
}
"""Names users bring from TRL, transformers and the authors' scripts -> the recipe's own field."""


def _unknown_key(key: str, known: list[str]) -> str:
    section, _, name = key.rpartition(".")
    alias = f"{section}.{ALIASES[name]}" if section and name in ALIASES else ALIASES.get(name)
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
