"""Launch profiles: the accelerate config a recipe runs with, and the launch settings taken from it.

`launch.profile` is one of
  - a shipped profile (gpmctl/engine/profiles/*.yaml: single, ddp, zero2, zero3, zero3_offload): a template
    whose engine is used; processes, machines and precision come from the recipe;
  - a path to your own accelerate config file (what `accelerate config` writes): honoured whole, as
    `accelerate launch --config_file` would: its num_processes, num_machines, main_process_port and
    mixed_precision are the run's, and its DeepSpeed settings (deepspeed_config, or a deepspeed_config_file)
    the engine's. A value set where the profile was named, or later, still wins: the recipe's own values
    when the recipe file names the profile, only the command line's when the command line does
    (`gpmctl train-rm gpm_8b launch.profile=mine.yaml` runs with mine.yaml's processes, not the recipe's 8).
    train.precision `auto` is no choice: the profile's mixed_precision replaces it;
  - not set: the default accelerate config, where `accelerate config` saved one
    ($HF_HOME/accelerate/default_config.yaml, HF_HOME being $XDG_CACHE_HOME/huggingface or
    ~/.cache/huggingface by default), honoured whole like your own file below every value the recipe or
    the command line sets; else `single`.

`resolve_launch` applies this to a loaded recipe and records where each launch setting came from in
`recipe.launch_from` ("recipe", "command line", "profile file PATH", "default accelerate config PATH",
"shipped profile NAME", "gpmctl default"), which `gpmctl train-rm --dry-run` shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from gpmctl.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "engine" / "profiles"

# accelerate's mixed_precision -> train.precision
_PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
# where a value was set, lowest first: a profile's values replace those set below the layer that named it
_LAYERS = {"recipe": 1, "command line": 2}


def shipped_profiles() -> dict[str, Path]:
    """Name -> path of every accelerate config shipped with gpmctl (single, ddp, zero2, zero3, ...)."""
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"))}


def resolve_profile(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = shipped_profiles()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise ConfigError(
        f"launch.profile: {name_or_path!r} is neither a shipped profile ({', '.join(shipped)}) nor an accelerate config file"
    )


def read_profile(name_or_path: str) -> dict:
    return yaml.safe_load(resolve_profile(name_or_path).read_text()) or {}


def is_shipped(name_or_path: str) -> bool:
    return resolve_profile(name_or_path).resolve().parent == PROFILES_DIR


def zero_stage(name_or_path: str) -> int | None:
    """The ZeRO stage of a DeepSpeed profile (from its deepspeed_config, or the JSON file it names); None otherwise."""
    profile = read_profile(name_or_path)
    if profile.get("distributed_type") != "DEEPSPEED":
        return None
    settings = profile.get("deepspeed_config") or {}
    if settings.get("deepspeed_config_file"):
        config_file = Path(settings["deepspeed_config_file"])
        try:
            return int(json.loads(config_file.read_text()).get("zero_optimization", {}).get("stage", 0))
        except (OSError, ValueError) as e:
            raise ConfigError(f"launch.profile: {name_or_path}: deepspeed_config_file {config_file}: {e}") from None
    return int(settings.get("zero_stage", 0))


def default_accelerate_config() -> Path | None:
    """The config `accelerate config` saved as the default of `accelerate launch` on this machine, if any."""
    cache = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    path = Path(os.path.expanduser(cache)) / "accelerate" / "default_config.yaml"
    return path if path.is_file() else None


def resolve_launch(recipe):
    """Fill `recipe.launch` (and train.precision) from the accelerate config the recipe runs with (module
    docstring); record each setting's origin in `recipe.launch_from`. Returns the recipe, validated again."""
    set_by = getattr(recipe, "set_by", {})
    source = getattr(recipe, "source", "recipe")
    lc, t = recipe.launch, recipe.train
    found = {}
    default = None if "launch.profile" in set_by else default_accelerate_config()
    if default is not None:
        lc.profile = str(default)
    try:
        profile = read_profile(lc.profile)
        shipped = is_shipped(lc.profile)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    if shipped:
        origin = f"shipped profile {lc.profile}"
    else:
        origin = f"{'default accelerate config' if default is not None else 'profile file'} {lc.profile}"
        found = {
            key: profile[key] for key in ("num_processes", "num_machines", "main_process_port") if profile.get(key) is not None
        }
        if profile.get("mixed_precision") in _PRECISIONS:
            found["precision"] = _PRECISIONS[profile["mixed_precision"]]
    launch_from = {"launch.profile": set_by.get("launch.profile", origin if default is not None else "gpmctl default")}
    named_at = _LAYERS.get(set_by.get("launch.profile"), 0)  # the default accelerate config: below the recipe
    for key, section in (("num_processes", lc), ("num_machines", lc), ("main_process_port", lc), ("precision", t)):
        name = f"{'train' if section is t else 'launch'}.{key}"
        given = name in set_by and not (key == "precision" and t.precision == "auto")
        if given and (_LAYERS[set_by[name]] >= named_at or key not in found):
            launch_from[name] = set_by[name]
        elif key in found:
            setattr(section, key, found[key] if key == "precision" else int(found[key]))
            launch_from[name] = origin
        else:
            launch_from[name] = "gpmctl default"
    launch_from["engine"] = origin
    recipe.launch_from = launch_from
    try:
        recipe.validate()  # again: the profile's values are checked as the recipe's are
    except ConfigError as e:
        raise ConfigError(f"{source}: {e} (launch settings from {origin})") from None
    return recipe
