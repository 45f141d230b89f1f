"""Scoring K responses per prompt: the prompt once per group (shared) vs once per response (today's padded
batches) vs a pairwise (PairRM-style) model vs a naive loop.

    python bench/score_throughput.py                       # K = 8, 16 HH-RLHF prompts, 50M Llama, CPU, 3 repeats
    python bench/score_throughput.py --model tiny --naive  # the tiny Llama, plus the naive loop

Data: the first `--prompts` multi-turn prompts of the HH-RLHF file (../shared/data/hh-rlhf), each with K
responses drawn from the file's chosen and rejected answers, so prompt and response lengths are HH's (the
prompt is the larger part). All paths use the same backbone and produce the same K x K table per prompt:
  shared     `Scorer.embed` with share_prompt: each prompt's K sequences in one packed row holding the
             prompt once (gpmctl.models.embed.embed_groups), the default of `gpmctl score` and `eval`
  unshared   `Scorer.embed` without it: each (prompt, response) embedded once, in length-sorted padded
             batches (what `gpmctl score` did before share_prompt)
  pairwise   a pair model in the style of PairRM: one forward per ordered pair over
             [prompt, response i, response j] (K(K-1) sequences, each longer), batched; run on
             `--pairwise-prompts` prompts and reported per prompt
  naive      (--naive) per pair, re-tokenise both responses and run them one sequence at a time
Prints the median seconds per prompt of `--repeats` runs, tokens computed, and the speed-ups; the shared
and unshared tables are checked to agree (float32: to rounding). There is no pass/fail.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gpmctl.config import TinyBackbone  # noqa: E402
from gpmctl.data.tokenize import SequenceEncoder, pack_groups, pad_sequences  # noqa: E402
from gpmctl.models import preference as P  # noqa: E402
from gpmctl.models.build import tiny_backbone  # noqa: E402
from gpmctl.models.embed import Scorer  # noqa: E402
from gpmctl.models.heads import HeadConfig  # noqa: E402
from gpmctl.models.model import PreferenceModel  # noqa: E402
from gpmctl.models.sources import load_tokenizer  # noqa: E402

HH_FILE = Path(
    os.environ.get("GPMCTL_BENCH_HH")  # e.g. a copy carried to another machine
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
)
SHAPES = {  # Llama shapes of bench/train_throughput.py (vocab: the tiny tokenizer's)
    "tiny": TinyBackbone(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2),
    "50m": TinyBackbone(hidden_size=512, intermediate_size=1408, num_layers=14, num_heads=8, num_kv_heads=8),
}


def hh_groups(prompts: int, k: int, seed: int) -> list[tuple[list[dict], list[list[dict]]]]:
    """HH-RLHF prompts (messages) with K responses each, drawn from the file's answers."""
    from gpmctl.data.formats import ReadOptions
    from gpmctl.data.sources import read_source

    rows = list(read_source(str(HH_FILE), options=ReadOptions(allow_empty_responses=True)))
    answers = [r.chosen for r in rows if r.chosen[-1]["content"].strip()] + [
        r.rejected for r in rows if r.rejected[-1]["content"].strip()
    ]
    rng = random.Random(seed)
    return [(rows[i].prompt, [rng.choice(answers) for _ in range(k)]) for i in range(prompts)]


def scorer_path(scorer: Scorer, data):
    value, gate = scorer.embed([p for p, _ in data], [rs for _, rs in data])
    return scorer.score_matrix(value, gate)


@torch.no_grad()
def pairwise_path(model, encoder, data, batch_size):
    """One forward per ordered pair, as a pair model must: the pair is one sequence."""
    tables = []
    for prompt, responses in data:
        k = len(responses)
        pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
        text = lambda r: r[-1]["content"]  # noqa: E731
        seqs = [
            encoder.encode(prompt, [{"role": "assistant", "content": f"A: {text(responses[i])}\nB: {text(responses[j])}"}])
            for i, j in pairs
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
                    batch = pad_sequences([encoder.encode(prompt, r)], encoder.tokenizer.pad_token_id)
                    outs.append(model(batch["input_ids"], batch["attention_mask"], batch["prompt_end"]))
                table[i, j] = P.preference_score(outs[0].value, outs[1].value, outs[0].gate)[0]
        tables.append(table)
    return torch.stack(tables)


def median_seconds(repeats: int, fn, *args):
    """Median wall time of `repeats` calls (after one warm-up call on the same inputs) and the last result."""
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), (min(times), max(times)), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--pairwise-prompts", type=int, default=2, help="prompts the pairwise path runs (it is K - 1 times slower)")
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--model", choices=sorted(SHAPES), default="50m")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive", action="store_true", help="also the naive loop (2 K(K-1) single-sequence forwards)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tok = load_tokenizer("tiny")
    backbone = tiny_backbone(tok, SHAPES[args.model], args.seed)
    model = PreferenceModel(backbone, HeadConfig(kind="gpm", dim=8, gate=True)).eval()
    encoder = SequenceEncoder(tok, args.max_length)
    data = hh_groups(args.prompts, args.k, args.seed)
    params = sum(p.numel() for p in model.parameters())
    groups = [[encoder.encode(p, r) for r in rs] for p, rs in data]
    prompt_tokens = statistics.mean(len(encoder.tokenizer(encoder.render_prompt(p))["input_ids"]) for p, _ in data)
    separate = sum(len(s.ids) for g in groups for s in g)
    shared_tokens = pack_groups(groups)["input_ids"].shape[1]
    print(
        f"K = {args.k} HH-RLHF responses x {args.prompts} HH-RLHF prompts (mean prompt {prompt_tokens:.0f} tokens), "
        f"Llama {args.model} ({params / 1e6:.1f}M params), {torch.get_num_threads()} threads, batch {args.batch_size} sequences, "
        f"median of {args.repeats}\n"
    )
    unshared = Scorer(model, encoder, args.batch_size, "cpu", share_prompt=False)
    t_unshared, spread_u, S_unshared = median_seconds(args.repeats, scorer_path, unshared, data)
    assert model.enable_packing()
    shared = Scorer(model, encoder, args.batch_size, "cpu", share_prompt=True)
    t_shared, spread_s, S_shared = median_seconds(args.repeats, scorer_path, shared, data)
    few = data[: args.pairwise_prompts]
    t_pair, spread_p, _ = median_seconds(1, pairwise_path, model, encoder, few, args.batch_size)
    rows = [
        ("shared", args.k, shared_tokens / args.prompts, t_shared / args.prompts, spread_s),
        ("unshared", args.k, separate / args.prompts, t_unshared / args.prompts, spread_u),
        ("pairwise", args.k * (args.k - 1), None, t_pair / len(few), spread_p),
    ]
    if args.naive:
        t_naive, spread_n, _ = median_seconds(1, naive_path, model, encoder, few)
        rows.append(("naive", 2 * args.k * (args.k - 1), None, t_naive / len(few), spread_n))
    print("| path | forwards/prompt | tokens computed/prompt | s/prompt (median) | spread (s, whole run) | shared speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, forwards, tokens, per_prompt, (lo, hi) in rows:
        tok_col = f"{tokens:,.0f}" if tokens is not None else "-"
        print(f"| {name} | {forwards} | {tok_col} | {per_prompt:.3f} | {lo:.2f}-{hi:.2f} | {per_prompt / rows[0][3]:.2f}x |")
    off = ~torch.eye(args.k, dtype=torch.bool)
    diff = (S_shared - S_unshared)[:, off].abs().max().item()
    print(f"\nshared vs unshared K x K scores: largest difference {diff:.2e} (float32 rounding)")


if __name__ == "__main__":
    main()
