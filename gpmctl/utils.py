"""Small shared helpers: stderr logging, the jsonl run log, the environment report, safe output files."""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def flatten(values: dict, prefix: str = "") -> dict:
    """A nested dict as {"train.lr": ..., "model.kind": ...}."""
    flat = {}
    for key, value in values.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


class RunLog:
    """Append-only jsonl of training events; their numbers also go to the run's experiment trackers (accelerate's
    GeneralTracker objects: gpmctl.train.checkpoint.open_trackers)."""

    def __init__(self, path: Path, enabled: bool = True, trackers: list | None = None):
        self.enabled = enabled
        self.file = open(path, "a", encoding="utf-8") if enabled else None
        self.trackers = trackers or []

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self.file.flush()
        if self.trackers and "step" in record:
            prefix = "" if record.get("event") in ("eval",) else f"{record.get('event', 'train')}/"
            scalars = {
                prefix + key: value
                for key, value in record.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "time")
            }
            for tracker in self.trackers:
                tracker.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def package_versions(
    names=("gpmctl", "torch", "transformers", "accelerate", "datasets", "safetensors", "deepspeed", "peft"),
) -> dict:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_report(engine=None) -> dict:
    """Versions, machine and devices; with `engine` (gpmctl.engine.Engine) the run's process layout too."""
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
    if engine is not None:
        report.update(engine.environment())
    return report


def first_line(e: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def json_text(value, **kwargs) -> str:
    """json.dumps for every results file: NaN and infinities raise, since `NaN` / `Infinity` are not JSON."""
    return json.dumps(value, allow_nan=False, **kwargs)


def file_mode() -> int:
    """The mode a plain new file gets under the current umask (mkstemp's 0600 is only for the temporary)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def is_disk_full(e: OSError) -> bool:
    # pyarrow's OSError carries the message but not always the errno
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e)


def file_in_the_way(path: str | Path) -> Path | None:
    """The first of `path` and its parents that exists and is not a folder (so nothing can be created
    there or under it), or None."""
    path = Path(path).absolute()
    return next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)


def check_output_file(path: str | Path, label: str | None = None) -> None:
    """Before any work: `path` can become a file (it is no folder, and no parent of it is a file). A problem is
    one GpmctlError line starting with `label` (default: the path)."""
    from gpmctl.errors import GpmctlError

    label = label or str(path)
    if Path(path).is_dir():
        raise GpmctlError(f"{label}: is a directory")
    blocker = file_in_the_way(Path(path).parent)
    if blocker:
        raise GpmctlError(f"{label}: {blocker} is a file, not a directory")


DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype of every command that loads a model


def resolve_device(name: str) -> str:
    """--device -> a device torch can use here (`auto`: cuda when there is one, else cpu); anything else
    is a ConfigError (exit 2)."""
    import torch

    from gpmctl.errors import ConfigError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    present = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}[parsed.type]
    if (parsed.index or 0) >= present:
        raise ConfigError(f"--device {name}: no such device here ({present} {parsed.type} device(s) visible)")
    return name


def prepare_output(path: str | Path) -> Path:
    """Create the folder that will hold the output file `path` (with its parents) and return it. A folder
    where the file should be, a parent that is a file, or a folder that cannot be created is one line."""
    from gpmctl.errors import GpmctlError

    if Path(path).is_dir():
        raise GpmctlError(f"{path}: is a folder; name the output file")
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = file_in_the_way(folder) or folder
        raise GpmctlError(f"{path}: cannot create the folder {folder}: {blocker} is a file, not a folder") from None
    except OSError as e:
        raise GpmctlError(f"{path}: cannot create the folder {folder}: {e.strerror or e}") from None
    return folder


def output_folder(path: str | Path, source: str = "recipe") -> Path:
    """A run's output_dir, checked before any work: it may not exist yet, but it must not be a file or
    lie under one (one line naming the recipe `source` and the key, instead of an error at the first write)."""
    from gpmctl.errors import ConfigError

    path = Path(path)
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise ConfigError(f"{source}: output_dir: {path}: {blocker} is a file, not a folder")
    return path


def refuse_inputs_as_output(output: str | Path, inputs) -> None:
    """Stop before writing `output` when it is one of `inputs` (the same file by any path or link):
    the command would replace the data it is still reading."""
    from gpmctl.errors import GpmctlError

    if str(output) == "-" or not Path(output).exists():
        return
    for source in inputs:
        if str(source) != "-" and Path(source).exists() and os.path.samefile(source, output):
            raise GpmctlError(f"{output}: is also the input {source}; write the output elsewhere")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` for the caller to write. When the block ends normally it replaces
    `path`, with the mode a new file gets under the umask; when it fails or is interrupted (Ctrl-C, SIGTERM
    under `gpmctl.cli.main`) it is removed: `path` is always the old file or the complete new one. A full
    disk is one line (DiskFullError, exit 1); a folder that cannot hold the file is one line (exit 2)."""
    from gpmctl.errors import DiskFullError, GpmctlError

    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=prepare_output(path), prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise GpmctlError(f"{path}: cannot write here: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(f"no space left writing {path}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) through atomic_path: readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
