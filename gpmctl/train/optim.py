"""The optimizer and learning-rate schedule of every training job, from a recipe's `train:` section
(gpmctl.config.sections.OptimConfig): AdamW or RMSprop over the trainable parameters, no weight decay on
biases and norm weights (as the reference), and warmup followed by cosine, linear or constant decay."""

from __future__ import annotations

import math

import torch


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in two groups: decayed, and biases / norm weights (never decayed)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    """`t.optimizer` over `model`'s trainable parameters: AdamW(`t.adam_betas`) or RMSprop, lr `t.lr`."""
    groups = decay_groups(model, t.weight_decay)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=t.lr)
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas)


def build_schedule(optimizer: torch.optim.Optimizer, t, total_steps: int):
    """Linear warmup over `t.warmup_ratio` of `total_steps`, then `t.scheduler` decay (or constant)."""
    from transformers import get_scheduler

    name = t.scheduler if t.scheduler != "constant" else "constant_with_warmup"
    return get_scheduler(
        name, optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * total_steps), num_training_steps=total_steps
    )
