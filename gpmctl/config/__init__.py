"""Typed recipes: dataclasses that map one to one onto YAML keys and `key.path=value` overrides.

    loader.py      the one loader of every recipe kind (base overlays, overrides, did-you-mean, dump)
    sections.py    sections every kind shares: the tiny backbone, the optimisation, launch
    train_rm.py    the `gpmctl train-rm` recipe (Recipe)
    train_gpo.py   the `gpmctl train-gpo` recipe (GpoRecipe)

(The package name `gpmctl.recipes` is the shipped YAML files of the top-level `recipes/` folder.)
"""

from gpmctl.config.loader import dump_recipe, parse_override, recipe_to_dict, resolve_recipe, shipped_recipes
from gpmctl.config.sections import LaunchConfig, OptimConfig, TinyBackbone
from gpmctl.config.train_gpo import GpoRecipe, is_gpo_recipe, load_gpo_recipe
from gpmctl.config.train_rm import DataConfig, EvaluateConfig, ModelConfig, Recipe, TrainConfig, load_recipe

__all__ = [
    "DataConfig",
    "EvaluateConfig",
    "GpoRecipe",
    "LaunchConfig",
    "ModelConfig",
    "OptimConfig",
    "Recipe",
    "TinyBackbone",
    "TrainConfig",
    "dump_recipe",
    "is_gpo_recipe",
    "load_gpo_recipe",
    "load_recipe",
    "parse_override",
    "recipe_to_dict",
    "resolve_recipe",
    "shipped_recipes",
]
