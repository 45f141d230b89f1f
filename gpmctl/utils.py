"""Small shared helpers: stderr logging, the jsonl run log, the environment report, atomic writes."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

_console = None


def stderr_console():
    """The one Rich console of the process; it writes to stderr so stdout stays data only."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False)
    return _console


def quiet_libraries() -> None:
    """Keep library banners and progress bars off stderr (our own log lines say what happens)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not torch.cuda.is_available():  # DeepSpeed (imported by transformers when installed) warns otherwise
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def log(message: str) -> None:
    """A progress/diagnostic line on stderr (rank 0 only under a distributed launcher)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    print(f"[gpmctl {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class RunLog:
    """Append-only jsonl of training events (and TensorBoard scalars when tensorboard is installed)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.enabled = enabled
        self.file = open(path, "a", encoding="utf-8") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(path).parent / "tensorboard"))
            except ImportError:
                pass

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self.file.flush()
        if self.tb is not None and "step" in record:
            prefix = "" if record.get("event") in ("eval",) else f"{record.get('event', 'train')}/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "time"):
                    self.tb.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def package_versions(names=("gpmctl", "torch", "transformers", "accelerate", "datasets", "safetensors", "deepspeed", "peft")) -> dict:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_report(accelerator=None) -> dict:
    import torch

    report = {
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if accelerator is not None:
        report.update(device=str(accelerator.device), num_processes=accelerator.num_processes,
                      distributed_type=str(accelerator.distributed_type), mixed_precision=accelerator.mixed_precision)  # fmt: skip
    return report


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
