"""Scoring K responses per prompt: gpmctl's linear path vs a pairwise (PairRM-style) model vs a naive loop.

    python bench/score_throughput.py                  # K = 8, 16 prompts, tiny Llama, CPU
    python bench/score_throughput.py --hidden 256 --layers 4 --prompts 32

All three paths use the same backbone and produce the same K x K preference table per prompt:
  gpmctl     each response embedded once (K sequences per prompt), length-sorted batches, then
             K^2 scores from 2k-dimensional arithmetic (gpmctl.models.embed.embed_sequences + score_matrix)
  pairwise   a pair model in the style of PairRM: one forward per ordered pair over
             [prompt, response i, response j] (K(K-1) sequences, each about twice as long), batched
  naive      per pair, re-tokenise both responses and run them one sequence at a time (2 K(K-1) forwards)
Prints seconds per path and the speed-ups; the figures are the point, there is no pass/fail.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gpmctl.config import TinyBackbone  # noqa: E402
from gpmctl.data.tokenize import SequenceEncoder, pad_sequences  # noqa: E402
from gpmctl.models import preference as P  # noqa: E402
from gpmctl.models.build import tiny_backbone
from gpmctl.models.embed import embed_sequences  # noqa: E402
from gpmctl.models.heads import HeadConfig
from gpmctl.models.model import PreferenceModel
from gpmctl.models.sources import load_tokenizer

WORDS = (
    "the quick answer is that every good model reads the whole response before it decides which one is "
    "better for the user and why some replies are longer than others while staying clear and correct"
).split()


def make_data(prompts: int, k: int, seed: int) -> list[tuple[list[dict], list[str]]]:
    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    return [([{"role": "user", "content": text(10, 40)}], [text(10, 80) for _ in range(k)]) for _ in range(prompts)]


def gpmctl_path(model, encoder, data, batch_size):
    seqs = [encoder.encode(p, [{"role": "assistant", "content": r}]) for p, rs in data for r in rs]
    value, gate = embed_sequences(model, seqs, batch_size, encoder.tokenizer.pad_token_id, "cpu")
    k = len(data[0][1])
    return P.score_matrix(value.view(len(data), k, -1), None if gate is None else gate.view(len(data), k, -1)[:, 0])


@torch.no_grad()
def pairwise_path(model, encoder, data, batch_size):
    """One forward per ordered pair, as a pair model must: the pair is one sequence."""
    tables = []
    for prompt, responses in data:
        k = len(responses)
        pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
        seqs = [
            encoder.encode(prompt, [{"role": "assistant", "content": f"A: {responses[i]}\nB: {responses[j]}"}]) for i, j in pairs
        ]
        out = []
        for start in range(0, len(seqs), batch_size):
            batch = pad_sequences(seqs[start : start + batch_size], encoder.tokenizer.pad_token_id)
            out.append(model(batch["input_ids"], batch["attention_mask"], batch["prompt_end"]).value[:, 0])
        table = torch.zeros(k, k)
        for (i, j), s in zip(pairs, torch.cat(out)):
            table[i, j] = s
        tables.append(table)
    return torch.stack(tables)


@torch.no_grad()
def naive_path(model, encoder, data):
    """For every ordered pair: tokenise both responses again and embed them one at a time."""
    tables = []
    for prompt, responses in data:
        k = len(responses)
        table = torch.zeros(k, k)
        for i in range(k):
            for j in range(k):
                if i == j:
                    continue
                outs = []
                for r in (responses[i], responses[j]):
                    batch = pad_sequences(
                        [encoder.encode(prompt, [{"role": "assistant", "content": r}])], encoder.tokenizer.pad_token_id
                    )
                    outs.append(model(batch["input_ids"], batch["attention_mask"], batch["prompt_end"]))
                table[i, j] = P.preference_score(outs[0].value, outs[1].value, outs[0].gate)[0]
        tables.append(table)
    return torch.stack(tables)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tok = load_tokenizer("tiny")
    shape = TinyBackbone(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_layers=args.layers,
        num_heads=max(4, args.hidden // 64),
        num_kv_heads=max(2, args.hidden // 128),
    )
    model = PreferenceModel(tiny_backbone(tok, shape, args.seed), HeadConfig(kind="gpm", dim=8, gate=True)).eval()
    encoder = SequenceEncoder(tok, 512)
    data = make_data(args.prompts, args.k, args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"K = {args.k} responses x {args.prompts} prompts, Llama {args.hidden}x{args.layers} ({params / 1e6:.2f}M params), "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}"
    )

    gpmctl_path(model, encoder, data[:1], args.batch_size)  # warm-up
    t_gpm, S = timed(gpmctl_path, model, encoder, data, args.batch_size)
    t_pair, _ = timed(pairwise_path, model, encoder, data, args.batch_size)
    t_naive, S_naive = timed(naive_path, model, encoder, data)
    off = ~torch.eye(args.k, dtype=torch.bool)
    agree = torch.allclose(S.float()[:, off], S_naive[:, off], atol=1e-4)
    forwards = {"gpmctl": args.k, "pairwise": args.k * (args.k - 1), "naive": 2 * args.k * (args.k - 1)}
    print(f"{'path':<10} {'forwards/prompt':>15} {'seconds':>9} {'prompts/s':>10} {'gpmctl speed-up':>16}")
    for name, seconds in (("gpmctl", t_gpm), ("pairwise", t_pair), ("naive", t_naive)):
        print(f"{name:<10} {forwards[name]:>15} {seconds:>9.2f} {args.prompts / seconds:>10.1f} {seconds / t_gpm:>15.1f}x")
    print(f"gpmctl and naive tables agree within 1e-4: {agree}")


if __name__ == "__main__":
    main()
