"""Building a preference model for training from a recipe's `model` section: the backbone (the tiny
Llama built from a config, a folder, a hub id, package:/gguf: sources), LoRA adapters, a frozen backbone or
its last N layers, the head; and the dtype the trained weights are kept in.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpmctl.errors import ModelError
from gpmctl.models.heads import HeadConfig
from gpmctl.models.model import PreferenceModel
from gpmctl.models.sources import TINY, first_line, offline_hint, quiet_call, refuse_pickles, resolve_source


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
    itself (gpmctl.engine), where loading in `name` (bf16 for `auto` on a GPU) saves memory.
    AdamW stepping bf16 weights drops every update under half a bf16 step (~2^-9 of the weight): 10 steps at
    lr 1e-5 moved under 1.1% of the tiny model's entries. bf16 compute comes from autocast (train.precision)."""
    return resolve_dtype(name, device) if engine_keeps_fp32_copy else torch.float32


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
        return quiet_call(AutoModel.from_pretrained, name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a backbone from {name_or_path!r}: {first_line(e)}{offline_hint(name_or_path)}") from e


def build_model(
    model_cfg, tokenizer, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> PreferenceModel:
    """A fresh PreferenceModel for training, from a recipe's `model` section (gpmctl.config.ModelConfig).
    `dtype`: of the weights (a trainer passes `training_dtype`); default model.dtype as resolved for `device`."""
    head = HeadConfig.from_model_config(model_cfg)
    dtype = dtype or resolve_dtype(model_cfg.dtype, device)
    if model_cfg.backbone == TINY:
        backbone = tiny_backbone(tokenizer, model_cfg.tiny, seed, model_cfg.attn_implementation).to(dtype)
    else:
        backbone = load_backbone(model_cfg.backbone, dtype, model_cfg.attn_implementation, model_cfg.trust_remote_code)
    # Saved with the model: the pad token the `template` EOS rule drops from a sequence's end (the encoder's, the
    # tokenizer's), which is what transformers' sequence classifiers skip when the model is exported as one.
    backbone.config.pad_token_id = tokenizer.pad_token_id
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
    config = LoraConfig(
        r=model_cfg.lora_rank,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
    )
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
