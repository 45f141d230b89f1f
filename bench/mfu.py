"""Model FLOP utilisation of gpmctl's training step, against this machine's own measured peak.

    python bench/mfu.py                      # 50M Llama, 8 pairs of 512-token sequences, 2 + 5 steps
    python bench/mfu.py --model tiny --steps 20

The step is `gpmctl train-rm`'s (train_reward_model, BT, fp32, packed, batch 8 pairs = 16 sequences of
exactly `--seq-len` tokens), timed from the stamps of its log.jsonl records after the warm-up steps.
The peak is the best rate of large fp32 matmuls (square and model-shaped) measured in the same run,
before and after the training steps.

FLOP convention (PaLM, appendix B): per step 6 x N x tokens, N = non-embedding parameters (all but
the token embedding), plus attention 12 x layers x hidden x n^2 per sequence of n tokens (forward and
backward of QK^T and AV, no discount for the causal mask). Both figures are printed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from train_throughput import BATCH, LR, MODELS, model_folder, one_token_words, run_gpmctl, synthetic_pairs, write_jsonl


def matmul_peak(seconds: float = 3.0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s over a square and the 50M model's MLP- and attention-projection-shaped matmuls (on a GPU,
    also 8192-square ones, and each timing waits for the device)."""
    shapes = [(2048, 2048, 2048), (8192, 512, 1408), (8192, 1408, 512), (8192, 512, 512)]
    if device != "cpu":
        shapes += [(8192, 8192, 8192)]
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up
        sync()
        end = time.perf_counter() + seconds / len(shapes)
        while time.perf_counter() < end:
            start = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="50m", choices=sorted(MODELS))
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (every sequence is cut to exactly this)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/gpmctl_bench_mfu")
    args = ap.parse_args()

    from gpmctl.models.sources import load_tokenizer

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = model_folder(workdir, args.model)
    data = workdir / f"pairs_len{args.seq_len}.jsonl"
    # Longer than seq_len words, so data.max_length cuts every sequence to exactly seq_len tokens.
    n = args.seq_len
    write_jsonl(
        data,
        synthetic_pairs(
            one_token_words(load_tokenizer("tiny")),
            BATCH * (args.warmup + args.steps),
            seed=4,
            prompt=(n // 4, n // 4),
            response=(n, n),
        ),
    )

    peak_before = matmul_peak()
    run = SimpleNamespace(
        workdir=str(workdir),
        model=args.model,
        worker="mfu",
        folder=str(folder),
        data=str(data),
        eval_data=None,
        lr=LR,
        warmup=args.warmup,
        steps=args.steps,
    )
    result = run_gpmctl(run, [f"data.max_length={args.seq_len}", "train.share_prompt=false"])  # every token computed
    peak = max(peak_before, matmul_peak())

    shape = MODELS[args.model]
    layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(folder)
    n_params = sum(p.numel() for p in backbone.parameters()) - backbone.get_input_embeddings().weight.numel()
    sequences = 2 * result["pairs"]
    assert result["real_tokens"] == sequences * args.seq_len, "every sequence should hold exactly --seq-len tokens"
    dense = 6 * n_params * result["real_tokens"] / result["seconds"] / 1e9
    attention = 12 * layers * hidden * args.seq_len**2 * sequences / result["seconds"] / 1e9
    print(
        f"# MFU: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load avg {os.getloadavg()[0]:.2f}"
    )
    print(
        f"model {args.model}: {n_params:,} non-embedding parameters, {layers} layers, hidden {hidden}; "
        f"{BATCH} pairs x 2 x {args.seq_len} tokens per step, packed, fp32"
    )
    print(
        f"timed: {result['steps']} steps in {result['seconds']:.1f} s ({result['seconds'] / result['steps']:.2f} s/step, "
        f"{result['real_tokens'] / result['seconds']:,.0f} tokens/s)"
    )
    print(f"peak (best fp32 matmul, this run): {peak:.1f} GFLOP/s")
    print(f"achieved 6N:        {dense:.1f} GFLOP/s = {dense / peak:.1%} MFU")
    print(f"achieved 6N + attn: {dense + attention:.1f} GFLOP/s = {(dense + attention) / peak:.1%} MFU")


if __name__ == "__main__":
    main()
