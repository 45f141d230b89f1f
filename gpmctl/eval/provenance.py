"""What a reviewer needs to tell whether two numbers are comparable, saved in every result file
(`scorer_settings`): the gpmctl and library versions, a hash of the model's files (and its hub revision), a hash
and size of each data file, a hash of the chat template, the token rules (EOS rule, pad token, truncation side,
max length, how many sequences were cut), dtype, batch size, device and wall time."""

from __future__ import annotations

import functools
import hashlib
import re
import time
from pathlib import Path

MODEL_FILES = ("config.json", "preference_head.json", "model*.safetensors*", "tokenizer*", "special_tokens_map.json", "*.jinja")
"""The files that make a model what it is (not its card, logs, checkpoints or results)."""
HUB_REVISION = re.compile(r"/snapshots/([0-9a-f]{40})(/|$)")


def file_sha256(path: Path, chunk: int = 8 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(folder: Path | None) -> dict:
    """sha256 over the model's files (names and contents, in name order) and, for a hub snapshot, its revision."""
    if folder is None or not Path(folder).is_dir():
        return {}
    files = sorted({p for pattern in MODEL_FILES for p in Path(folder).glob(pattern) if p.is_file()})
    revision = HUB_REVISION.search(str(Path(folder).resolve()).replace("\\", "/"))
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)  # p: as named (a hub file is a link)
    return {
        "files": [p.name for p in files],
        "sha256": _files_sha256(stamp),
        **({"hub_revision": revision.group(1)} if revision else {}),
    }


@functools.lru_cache(maxsize=8)
def _files_sha256(stamp: tuple[tuple[str, int, int], ...]) -> str:
    """The digest of files named by (path, size, mtime): read once per process for an unchanged model (a suite
    reports it in every benchmark's result; a large model's weights take seconds to hash)."""
    digest = hashlib.sha256()
    for path, _, _ in stamp:
        digest.update(f"{Path(path).name}\0{file_sha256(Path(path))}\n".encode())
    return digest.hexdigest()


def data_files(data) -> list[dict]:
    """Each local data file behind `data` (a path, a folder's data files, or a list of them): path, bytes, sha256.
    Hub ids and generated sources have no file here and are left out (the result names them in `data`)."""
    paths = []
    for item in data if isinstance(data, (list, tuple)) else [data]:
        path = Path(str(item))
        if path.is_file():
            paths.append(path)
        elif path.is_dir():
            paths += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".gz", ".parquet", ".csv")
            )
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths]


def text_sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def provenance(scorer, data=None) -> dict:
    from gpmctl import __version__
    from gpmctl.utils import package_versions

    versions = package_versions(("torch", "transformers", "accelerate"))
    return {
        "gpmctl_version": __version__,
        "versions": versions,
        "model": model_fingerprint(scorer.folder),
        "data_files": data_files(data) if data is not None else [],
        "chat_template_sha256": text_sha256(scorer.encoder.tokenizer.chat_template),
        "wall_s": round(time.time() - scorer.started, 2),
    }
