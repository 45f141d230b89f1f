"""Saving, checking and loading preference model folders (Hugging Face style).

A saved model folder holds
    config.json               the backbone's transformers config
    model.safetensors         backbone weights under `<base_model_prefix>.*` (the causal-LM naming of the
                              released GPM checkpoints) + `value_head.weight` (+ `prompt_head.weight`);
                              sharded with model.safetensors.index.json when large
    preference_head.json      kind, dimension, gate, L2, tau, token rules: nothing is guessed from shapes
    tokenizer files
so `transformers.AutoModel.from_pretrained(folder)` loads the backbone on its own as well.

Reward models saved by other tools load too, as BT models read the way those tools read them (`foreign_head`):
    transformers / TRL   *ForSequenceClassification with num_labels 1 (backbone + a bias-free `score` linear on
                         the last token): the chat template's tokens as they are, read at the last non-pad token
    OpenRLHF             AutoModel + `value_head` (or config.value_head_prefix) linear, `normalize_reward`, `mean`,
                         `std` in config.json: OpenRLHF's text rule, rewards normalised when it says so
    the paper's release  `value_head.weight` (+ `prompt_head.weight`), no settings file (`_released_head`)
A hub id is fetched into the hub cache first (weights as safetensors only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from gpmctl.errors import ModelError
from gpmctl.models.build import load_backbone, plain_backbone, resolve_dtype
from gpmctl.models.heads import HEAD_FILE, HEAD_FORMAT, HeadConfig
from gpmctl.models.model import PreferenceModel
from gpmctl.models.sources import (
    GGUF,
    PACKAGE,
    PICKLE_SUFFIXES,
    first_line,
    offline_hint,
    quiet_call,
    refuse_pickles,
    resolve_source,
)


def model_state_dict(model: PreferenceModel) -> dict[str, torch.Tensor]:
    """Weights under the released-checkpoint names: `<prefix>.<backbone key>`, `value_head.weight`, ...
    LoRA adapters are merged, so the folder loads without peft."""
    backbone = plain_backbone(model.backbone)
    prefix = backbone.base_model_prefix or "model"
    state = {f"{prefix}.{k}": v for k, v in backbone.state_dict().items()}
    state["value_head.weight"] = model.value_head.weight
    if model.prompt_head is not None:
        state["prompt_head.weight"] = model.prompt_head.weight
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_model(
    model: PreferenceModel,
    out_dir: str | Path,
    tokenizer=None,
    extra_files: dict[str, str] | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write the model folder. Files go to a temporary folder first and are then moved in one by one,
    preference_head.json last, so an interrupted save never leaves a folder that loads wrong weights."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = model_state_dict(model)
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, tmp / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": split.tensor_to_filename,
        }
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    model.backbone.config.save_pretrained(tmp)
    # Record the head in config.json too, so a loader that only reads the config sees what the model is.
    config = json.loads((tmp / "config.json").read_text())
    config["preference_head"] = model.head.to_json()
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    (tmp / HEAD_FILE).write_text(json.dumps(model.head.to_json(), indent=2) + "\n")
    portable_files(tmp)
    normal_permissions(tmp)
    # A previous model in the folder must not be mixed with this one: drop its weights first.
    (out_dir / HEAD_FILE).unlink(missing_ok=True)
    for old in out_dir.glob("model*.safetensors*"):
        old.unlink()
    for path in sorted(tmp.iterdir(), key=lambda p: p.name == HEAD_FILE):
        os.replace(path, out_dir / path.name)
    tmp.rmdir()
    return out_dir


def record_reward_statistics(folder: Path, mean: float, std: float) -> None:
    """Store a saved BT model's reward mean and std (over its eval responses) in its head settings,
    preference_head.json and config.json's copy, each file replaced whole."""
    from gpmctl.utils import atomic_write_text

    head = read_head_file(folder / HEAD_FILE)
    head.reward_mean, head.reward_std = float(mean), float(std)
    config = read_json(folder / "config.json")
    config["preference_head"] = head.to_json()
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / HEAD_FILE, json.dumps(head.to_json(), indent=2) + "\n")


LEGACY_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""The class transformers 4.x builds from a tokenizer.json; transformers 5 writes `TokenizersBackend`, unknown to 4.x."""
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def portable_files(folder: Path) -> None:
    """Let transformers 4.4x-4.5x (RewardBench pins 4.51, and older pipelines) read a folder transformers 5
    wrote, with the same numbers: config.json gains the 4.x names of the rotary settings (`rope_theta`,
    `rope_scaling`: without them 4.x silently uses its default base) and of the dtype; tokenizer_config.json
    names a 4.x class, lists its extra special tokens under the 4.x key, and carries the chat template
    and model_input_names; special_tokens_map.json is written. transformers 5 reads both spellings."""
    config_file = folder / "config.json"
    if config_file.is_file():
        config = read_json(config_file)
        rope = config.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            config.setdefault("rope_theta", rope["rope_theta"])
            if rope.get("rope_type", "default") != "default":
                config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        if "dtype" in config:
            config.setdefault("torch_dtype", config["dtype"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_file = folder / "tokenizer_config.json"
    if not tokenizer_file.is_file():
        return
    settings = read_json(tokenizer_file)
    if settings.get("tokenizer_class") in (None, "TokenizersBackend") and (folder / "tokenizer.json").is_file():
        settings["tokenizer_class"] = LEGACY_TOKENIZER_CLASS
    if isinstance(settings.get("extra_special_tokens"), list):
        settings["additional_special_tokens"] = settings.pop("extra_special_tokens")
    template = folder / "chat_template.jinja"
    if template.is_file():
        settings.setdefault("chat_template", template.read_text())
    settings.setdefault("model_input_names", ["input_ids", "attention_mask"])
    tokenizer_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    special = {key: settings[key] for key in SPECIAL_TOKEN_KEYS if isinstance(settings.get(key), str)}
    if settings.get("additional_special_tokens"):
        special["additional_special_tokens"] = settings["additional_special_tokens"]
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def normal_permissions(root: Path) -> None:
    """Give a folder and everything under it the permissions the umask allows: safetensors writes files
    0600 and mkdtemp makes folders 0700, which the other users of a shared model folder cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


SINGLE_WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
HEAD_TENSORS = ("value_head.weight", "prompt_head.weight")
OWN_NAMES = {name: name for name in HEAD_TENSORS}
"""The head tensors of gpmctl's own and the released layout: stored under gpmctl's names."""


RELEASED_EXTRAS = ("lm_head.",)
"""Tensors of the released GPM checkpoints that a preference model does not use (the causal-LM head)."""

TensorIndex = dict[str, tuple[Path, list[int]]]
"""Tensor name -> (safetensors file holding it, shape)."""


def read_json(file: Path):
    """A JSON file of a model folder; one that is not JSON (or not UTF-8) is a ModelError naming it."""
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{file}: not JSON ({e})") from e


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
"""What a model needs from a hub repository: configs, safetensors weights, tokenizer files (never pickles)."""


def names_source(name: str) -> bool:
    """Whether `name` is no local path but a hub id or a package:/gguf: source, which `model_folder` fetches or finds."""
    return not Path(name).exists() and (name.startswith((PACKAGE, GGUF)) or HUB_ID.fullmatch(name) is not None)


def model_folder(path: str | Path) -> Path:
    """A model folder on disk: a local path, a package:NAME source, or a hub id fetched into the hub cache."""
    if isinstance(path, str) and not Path(path).exists():
        if path.startswith((PACKAGE, GGUF)):
            path = resolve_source(path)
        elif HUB_ID.fullmatch(path):
            return hub_folder(path)
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model folder")
    if not path.is_dir():
        raise ModelError(f"{path}: is a file, not a model folder")
    return path


def holds_model(path: str | Path) -> bool:
    """Whether a local folder holds a model gpmctl reads (its own, another tool's reward model, a released GPM)."""
    try:
        read_head_config(Path(path))
        return True
    except ModelError:
        return False


def hub_folder(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(quiet_call(snapshot_download, repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repository, gated, network: one line
        raise ModelError(
            f"{repo_id}: not a local folder, and the hub copy cannot be read: {first_line(e)}{offline_hint(repo_id)}"
        ) from e


def read_head_config(path: str | Path) -> HeadConfig:
    """The head settings of a model folder: preference_head.json, or, for a folder written by another tool, what
    `foreign_head` infers from its config.json and tensors."""
    path = model_folder(path)
    return _head_config(path, weight_shapes(path))[0]


def check_model_folder(path: str | Path) -> tuple[HeadConfig, TensorIndex, dict[str, str]]:
    """The head settings and tensors of a model folder, once its JSON files and safetensors headers show
    that a load cannot go wrong, before any weight is read: the safetensors hold exactly the tensors, in
    the shapes, that config.json and the head settings imply (so no backbone weight silently keeps its
    random initialisation), and no pickle is ever opened. The third value maps gpmctl's head tensor names
    (value_head.weight, ...) to the folder's own (score.weight in a transformers classifier)."""
    path = model_folder(path)
    tensors = weight_shapes(path)
    head, names = _head_config(path, tensors)
    expected = {names.get(name, name): shape for name, shape in expected_shapes(path, head).items()}
    present = {name: shape for name, (_, shape) in tensors.items()}
    missing = [n for n in expected if n not in present]
    unexpected = [n for n in present if n not in expected and not n.startswith(RELEASED_EXTRAS)]
    if missing or unexpected:
        found = [f"lack {_names(missing, 'tensor')}"] * bool(missing)
        found += [f"hold {_names(unexpected, 'unexpected tensor')}"] * bool(unexpected)
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        unread = f" ({', '.join(pickles)}: pickles are never read)" if pickles else ""
        raise ModelError(
            f"{path}: its safetensors {' and '.join(found)} (compared with config.json and the head settings){unread}"
        )
    wrong = [n for n in expected if present[n] != expected[n]]
    if wrong:
        name, source = wrong[0], HEAD_FILE if wrong[0] in names.values() else "config.json"
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ModelError(f"{tensors[name][0]}: {name} has shape {present[name]}, {source} implies {expected[name]}{more}")
    return head, tensors, names


def weight_shapes(path: Path) -> TensorIndex:
    """Every tensor of a model folder's weights, from the safetensors headers alone: the single
    model.safetensors, or the shards that model.safetensors.index.json maps each tensor to."""
    from safetensors import SafetensorError, safe_open

    single, index = path / SINGLE_WEIGHTS, path / WEIGHTS_INDEX
    if single.is_file() and index.is_file():
        raise ModelError(
            f"{path}: holds both {SINGLE_WEIGHTS} and {WEIGHTS_INDEX} (a stale model beside a newer one?); "
            "keep the files of one model only"
        )
    if not single.is_file() and not index.is_file():
        refuse_pickles(path)
        shards = sorted(p.name for p in path.glob("model-*.safetensors"))
        if shards:
            raise ModelError(f"{path}: has shards ({shards[0]}, ...) but no {WEIGHTS_INDEX}")
        raise ModelError(f"{path}: no model*.safetensors weights")
    weight_map = _weight_map(index) if index.is_file() else None
    tensors = {}
    for filename in sorted(set(weight_map.values())) if weight_map else [SINGLE_WEIGHTS]:
        file = path / filename
        if not file.is_file():
            raise ModelError(f"{index}: weight_map: {filename} is not in the folder")
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{file}: not a readable safetensors file, truncated or corrupt ({first_line(e)})") from e
        wanted = [name for name, shard in weight_map.items() if shard == filename] if weight_map else list(shapes)
        lacking = [name for name in wanted if name not in shapes]
        if lacking:
            raise ModelError(f"{file}: lacks {_names(lacking, 'tensor')} that {WEIGHTS_INDEX} maps to it")
        tensors.update({name: (file, shapes[name]) for name in wanted})
    return tensors


def _weight_map(index: Path) -> dict[str, str]:
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    # Shard names are plain file names in the folder: a path could point anywhere.
    shards = weight_map.values() if isinstance(weight_map, dict) else []
    if not shards or not all(isinstance(v, str) and v == Path(v).name for v in shards):
        raise ModelError(f"{index}: weight_map: expected an object of tensor name -> shard file name in this folder")
    return weight_map


def _head_config(path: Path, tensors: TensorIndex) -> tuple[HeadConfig, dict[str, str]]:
    """The head settings and where its tensors are stored: {gpmctl name: the folder's tensor name}."""
    if (path / HEAD_FILE).is_file():
        return read_head_file(path / HEAD_FILE), OWN_NAMES
    config = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    if not isinstance(config, dict):
        raise ModelError(f"{path / 'config.json'}: expected a JSON object")
    return foreign_head(path, config, {name: shape for name, (_, shape) in tensors.items()})


def foreign_head(path: Path, config: dict, shapes: dict[str, list[int]]) -> tuple[HeadConfig, dict[str, str]]:
    """A reward model another tool saved, read as that tool reads it (module docstring)."""
    classifiers = [a for a in config.get("architectures") or [] if str(a).endswith("ForSequenceClassification")]
    if classifiers:
        labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
        if labels != 1:
            raise ModelError(f"{path}: a {classifiers[0]} with {labels} labels; a reward model has num_labels 1")
        if "score.weight" not in shapes or "score.bias" in shapes:
            head = sorted(n for n in shapes if n.startswith(("classifier.", "score.", "pooler.")) or ".pooler." in n)
            raise ModelError(
                f"{path}: a {classifiers[0]} whose head is {', '.join(head[:3]) or 'not found'}: gpmctl reads sequence "
                "classifiers whose head is one bias-free linear `score` on the last token (decoder reward models)"
            )
        return HeadConfig(kind="bt", dim=1, gate=False, l2=False, tau=1.0, eos="template"), {"value_head.weight": "score.weight"}
    prefix = config.get("value_head_prefix") or ("score" if "score.weight" in shapes else "value_head")
    name = f"{prefix}.weight"
    if "normalize_reward" in config and shapes.get(name, [0])[0] == 1:  # OpenRLHF writes it into a reward model's config
        head = HeadConfig(kind="bt", dim=1, gate=False, l2=False, tau=1.0, eos="openrlhf")
        if config.get("normalize_reward") and "mean" in config and "std" in config:
            head.reward_mean, head.reward_std, head.normalize = float(config["mean"]), float(config["std"]), True
        return head, {"value_head.weight": name}
    return _released_head(path, shapes), OWN_NAMES


def _released_head(path: Path, shapes: dict[str, list[int]]) -> HeadConfig:
    """The paper's released layout, inferred from the head tensors as the authors' inference code does:
    dim = rows of value_head.weight, gate iff prompt_head.weight, L2 on, tau 0.1 (one row: BT)."""
    if "value_head.weight" not in shapes:
        raise ModelError(
            f"{path}: not a preference model (no {HEAD_FILE}, no value_head.weight in its safetensors, and "
            "config.json names no *ForSequenceClassification reward model)"
        )
    rows = shapes["value_head.weight"][0]
    if rows == 1:
        return HeadConfig(kind="bt", dim=1, gate=False, l2=False, tau=1.0)
    if rows % 2:
        raise ModelError(f"{path}: value_head.weight has {rows} rows; a GPM needs an even number")
    gate = "prompt_head.weight" in shapes
    if gate and shapes["prompt_head.weight"][0] * 2 != rows:
        raise ModelError(f"{path}: prompt_head.weight has {shapes['prompt_head.weight'][0]} rows, expected {rows // 2}")
    return HeadConfig(kind="gpm", dim=rows, gate=gate, l2=True, tau=0.1)


def read_head_file(file: Path) -> HeadConfig:
    """preference_head.json, each field checked against what a recipe's `model` section allows."""
    import math
    import typing

    from gpmctl.config import ModelConfig
    from gpmctl.data.tokenize import EOS_RULES

    data = read_json(file)
    if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
        raise ModelError(f"{file}: format: expected {HEAD_FORMAT!r} (not a gpmctl preference head file)")
    head = HeadConfig.from_json(data, str(file))
    hints = typing.get_type_hints(ModelConfig)
    for name in ("kind", "gate_variant", "pool", "eos", "gate_prompt"):
        choices = EOS_RULES if name == "eos" else typing.get_args(hints[name])
        if getattr(head, name) not in choices:
            raise ModelError(f"{file}: {name}: expected one of {', '.join(choices)}, got {getattr(head, name)!r}")
    for name in ("gate", "l2", "normalize"):
        if not isinstance(getattr(head, name), bool):
            raise ModelError(f"{file}: {name}: expected true or false, got {getattr(head, name)!r}")
    odd = head.kind in ("gpm", "gpm_bt") and head.dim % 2 if isinstance(head.dim, int) else True
    if not isinstance(head.dim, int) or isinstance(head.dim, bool) or odd or head.dim < (2 if head.kind == "gpm" else 0):
        need = {"gpm": "an even integer >= 2 (a GPM embeds in R^2k)", "gpm_bt": "an even integer >= 0"}.get(
            head.kind, "an integer"
        )
        raise ModelError(f"{file}: dim: expected {need}, got {head.dim!r}")
    if not isinstance(head.tau, (int, float)) or isinstance(head.tau, bool) or not math.isfinite(head.tau) or head.tau <= 0:
        raise ModelError(f"{file}: tau: expected a finite number > 0, got {head.tau!r}")
    if (
        not isinstance(head.bt_tau, (int, float))
        or isinstance(head.bt_tau, bool)
        or not math.isfinite(head.bt_tau)
        or head.bt_tau <= 0
    ):
        raise ModelError(f"{file}: bt_tau: expected a finite number > 0, got {head.bt_tau!r}")
    for name in ("reward_mean", "reward_std"):
        value = getattr(head, name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)):
            raise ModelError(f"{file}: {name}: expected a finite number or null, got {value!r}")
    if head.normalize and (problem := head.normalization_problem()):
        raise ModelError(f"{file}: normalize: the model {problem}")
    return head


def expected_shapes(path: Path, head: HeadConfig) -> dict[str, list[int]]:
    """Tensor name -> shape of what `save_model` writes for this config.json and head, from a model built
    on the meta device (no memory used, no weight read)."""
    from huggingface_hub import errors as hub_errors
    from transformers import AutoConfig, AutoModel

    # transformers 5 configs are strict dataclasses: a wrong field type raises the hub's own error
    bad_config = (OSError, ValueError, KeyError, TypeError, AttributeError, getattr(hub_errors, "StrictDataclassError", OSError))
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: no config.json (the backbone's transformers config)")
    read_json(config_file)
    try:
        config = quiet_call(AutoConfig.from_pretrained, str(path), trust_remote_code=False)
        with torch.device("meta"):
            model = PreferenceModel(quiet_call(AutoModel.from_config, config, trust_remote_code=False), head)
    except bad_config as e:
        cause = f" {first_line(e.__cause__)}" if e.__cause__ is not None else ""  # the strict errors name the field, then why
        raise ModelError(f"{config_file}: {first_line(e)}{cause}") from e
    return {name: list(tensor.shape) for name, tensor in model_state_dict(model).items()}


def load_model(
    path: str | Path, dtype: str = "auto", device: str | torch.device = "cpu", attn_implementation: str | None = "sdpa"
) -> PreferenceModel:
    """Load a folder written by `save_model`, a reward model of another tool or a checkpoint in the released GPM
    layout (backbone through transformers, head tensors read by name), once `check_model_folder` finds nothing
    wrong with it. `path` may be a hub id or package:NAME."""
    from safetensors import safe_open

    path = model_folder(path)
    head, tensors, names = check_model_folder(path)
    torch_dtype = resolve_dtype(dtype, device)
    backbone = load_backbone(str(path), torch_dtype, attn_implementation, trust_remote_code=False)
    model = PreferenceModel(backbone, head)
    for name, layer in zip(HEAD_TENSORS, (model.value_head, model.prompt_head)):
        if layer is not None:
            stored = names.get(name, name)
            with safe_open(str(tensors[stored][0]), framework="pt") as f, torch.no_grad():
                layer.weight.copy_(f.get_tensor(stored).to(layer.weight.dtype))
    return model.to(device).eval()


def _names(names: list[str], noun: str) -> str:
    """`3 tensors (a, b, c)` or `40 tensors (a, b, c, ...)`: enough to recognise them on one line."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} {noun}{'s' * (len(names) != 1)} ({shown})"
