"""Recipe sections every kind of recipe shares, declared once: the tiny backbone's shape, the optimisation
(the base of each recipe's `train:` section) and `launch:`; with the value checks that go with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
class OptimConfig:
    """The optimisation keys of every recipe's `train:` section (train-rm and train-gpo), under the same names
    and meaning; each recipe kind sets its own defaults and adds its own keys (gpmctl/train/optim.py builds them)."""

    epochs: float = 1.0
    batch_size: int = 8
    """Examples per device per micro-batch (train-rm: pairs; train-gpo: sequences)."""
    grad_accum: int = 1
    lr: float = 2e-6
    optimizer: Literal["adamw", "rmsprop"] = "adamw"
    """`adamw` (torch.optim.AdamW with `adam_betas`) or `rmsprop` (the GPO authors' choice)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    """Decoupled weight decay; never on biases and norm weights (as the reference)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """`auto`: bf16 mixed precision on a bf16-capable GPU, fp32 on CPU (bf16 is slower there). Mixed precision
    runs the forward in autocast over float32 weights and optimizer state; fp16 needs a CUDA GPU."""
    seed: int = 42
    logging_steps: int = 10
    save_steps: int | None = None
    """Write a resumable checkpoint every N optimizer steps (and on SIGTERM/SIGUSR1)."""
    report_to: str = "none"
    """Experiment trackers, comma-separated: tensorboard, wandb, mlflow (accelerate's trackers; each needs its
    package: pip install tensorboard / wandb / mlflow), or none. They log the same scalars as log.jsonl, under
    output_dir (tensorboard/, wandb/, mlruns/). wandb runs offline unless WANDB_MODE or WANDB_API_KEY says otherwise."""


TRACKERS = ("tensorboard", "wandb", "mlflow")


def trackers(report_to: str) -> list[str]:
    """`train.report_to` as a list of tracker names ([] for none)."""
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    return [] if names == ["none"] else names


@dataclass
class LaunchConfig:
    """How many processes run the recipe and with which distributed engine (see gpmctl/engine/launch.py)."""

    profile: str = "single"
    """An accelerate config: a shipped profile (`gpmctl recipes ls` lists them: single, ddp and the sharded
    ones) or a path to your own file, honoured whole (its processes, machines, port, mixed precision and
    DeepSpeed settings, where the recipe does not set them). Not set: the default accelerate config
    (`accelerate config` writes it) if there is one, else `single`. With more than one process gpmctl re-runs
    itself under `accelerate launch` (gpmctl/config/profiles.py; `--dry-run` shows where each setting came from)."""
    num_processes: int = 1
    """Processes in all, over all machines (one per GPU). The global batch is batch_size x grad_accum x this.
    Default: your profile file's num_processes, else 1."""
    num_machines: int = 1
    """Machines (nodes). More than one needs a launcher per machine: see recipes/slurm/. Default: your profile file's, else 1."""
    main_process_port: int | None = None
    """Rendezvous port; default: your profile file's, else MASTER_PORT if set, else a free port (one machine) or 29500."""


def optimisation_checks(t: OptimConfig) -> list[tuple[bool, str, str]]:
    return [
        (t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}"),
        (t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}"),
        (t.lr > 0, "train.lr", f"must be > 0, got {t.lr}"),
        (t.weight_decay >= 0, "train.weight_decay", "must be >= 0"),
        (0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)"),
        (t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0: no clipping)"),
        (t.logging_steps >= 1, "train.logging_steps", f"must be >= 1, got {t.logging_steps}"),
        (
            t.save_steps is None or t.save_steps >= 1,
            "train.save_steps",
            f"must be >= 1 (or null: on a stop signal), got {t.save_steps}",
        ),
        (all(0.0 <= b < 1.0 for b in t.adam_betas), "train.adam_betas", "must be in [0, 1)"),
        (
            all(name in TRACKERS for name in trackers(t.report_to)),
            "train.report_to",
            f"expected none or a comma-separated list of {', '.join(TRACKERS)}, got {t.report_to!r}",
        ),
    ]


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
        (
            launch.num_machines >= 1 and launch.num_processes % launch.num_machines == 0,
            "launch.num_machines",
            "must be >= 1 and divide launch.num_processes",
        ),
    ]
