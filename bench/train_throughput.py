"""Reward-model training throughput: gpmctl train-rm vs TRL's RewardTrainer, side by side.

    pip install -e '.[bench]'                          # TRL 1.16 (benchmark-only extra)
    python bench/train_throughput.py --quick           # 50M + tiny, short windows, 3 repeats, every profile
    python bench/train_throughput.py --models 50m --profiles hh,hh_real --contenders trl,gpmctl_packed,gpmctl
    python bench/train_throughput.py --models tiny --tcmalloc

Every contender runs in its own subprocess (so peak RSS is its own) on the same pairs, the same backbone
weights (a Llama built from config and saved once), the same global batch (8 pairs), the same AdamW
(lr 1e-5, betas 0.9/0.95, no weight decay, torch.optim.AdamW, clip 1.0, cosine with 3% warm-up), fp32,
BT loss. The gpmctl rows run `gpmctl.train.reward.train_reward_model`, the code `gpmctl train-rm` runs,
from a recipe; their timing comes from the wall-clock stamps of the per-step records in its log.jsonl.
TRL runs `RewardTrainer` with a callback stamping each step end. Both windows span the same work: data
collation, forward, backward, clipping, optimizer, schedule. TRL reads the pairs in gpmctl's epoch order
(sequential sampler), so the non-grouped rows train on exactly the same batches and pairs/s compare
directly; grouped rows see other batches, compare their real tokens/s. Both render the pairs with the
same chat template. Each window runs `--repeats` times (rounds interleave the contenders); the tables
give the median and the spread (min-max) of pairs/s.

Columns: real tokens are the tokens of the pairs' sequences (a shared prompt counts twice: what
separate sequences hold, without padding); computed tokens are what the backbone ran (padding
included for TRL and padded rows, a shared prompt once for gpmctl). MFU (gpmctl rows): useful FLOPs
per second over this machine's fp32 matmul peak measured in the same run (bench/mfu.py's convention:
6 x non-embedding parameters x computed tokens, plus attention 12 x layers x hidden x query-key pairs,
a block of n tokens after a prefix of p counting n x (p + n)).

Profiles (`--profiles`):
  synthetic  prompt ~U[16,128] words, responses ~U[16,384] words, each word one token of the tiny
             tokenizer (plus the chat template's tokens), as in ../shared/reference/trl_baseline.md;
  hh         the same one-token words, with (prompt, chosen, rejected) token counts drawn jointly from
             the HH-RLHF file's own rows (the tiny tokenizer's counts): its long multi-turn prompts;
  hh_real    the HH-RLHF file itself (../shared/data/hh-rlhf), in TRL's conversational format.

Then GPM (dim 8, gate) against BT inside gpmctl (the head's overhead), and "at equal accuracy":
the tiny model trained by both on a learnable synthetic task for the same steps, with both final
held-out accuracies. `--tcmalloc` adds rows with tcmalloc preloaded (optional: gpmctl does not need it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
HH_FILE = Path(
    os.environ.get("GPMCTL_BENCH_HH")  # e.g. a copy carried to another machine
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
)
BATCH = 8
LR = 1e-5
SEED = 42
MODELS = {  # Llama shapes; "50m" is the baseline study's (49.2M parameters with vocab 8192)
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=1024
    ),
    "50m": dict(
        hidden_size=512,
        num_hidden_layers=14,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1408,
        vocab_size=8192,
    ),
    "1b": dict(  # Llama-3.2-1B's shape (a smaller vocabulary): for GPUs
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=8192,
    ),
}
WINDOWS = {
    "quick": {"tiny": (10, 50), "50m": (3, 10), "1b": (5, 20)},
    "full": {"tiny": (20, 200), "50m": (3, 30), "1b": (10, 100)},
}
# contender -> (runner, gpmctl recipe overrides); see the module docstring for what each measures
CONTENDERS = {
    "trl": ("trl", []),
    "gpmctl_padded": ("gpmctl", ["train.packing=false"]),
    "gpmctl_padded_grouped": ("gpmctl", ["train.packing=false", "train.group_by_length=true"]),
    "gpmctl_packed": ("gpmctl", ["train.share_prompt=false"]),  # packed, each pair's prompt computed twice
    "gpmctl": ("gpmctl", []),  # the defaults: packing and share_prompt (auto), no grouping
    "gpmctl_gpm_gate": ("gpmctl", ["model.kind=gpm", "model.dim=8", "model.gate=true"]),
}
ACCURACY_TASK = {"pairs": 600, "eval_pairs": 200, "steps": 60, "lr": 1e-3}


# ----------------------------------------------------------------------------------------------------
# Shared inputs: the tokenizer's one-token words, the pairs, the model folders


def one_token_words(tokenizer) -> list[str]:
    """Words that are exactly one token each, at the start of a text or after a space."""
    words = set()
    for token_id in range(len(tokenizer)):
        w = tokenizer.decode([token_id]).strip()
        if w.isalpha() and len(tokenizer(f"{w} {w} {w}", add_special_tokens=False)["input_ids"]) == 3:
            words.add(w)
    return sorted(words)


def synthetic_pairs(words: list[str], n: int, seed: int, prompt=(16, 128), response=(16, 384), learnable=False) -> list[dict]:
    """TRL's conversational format, which gpmctl reads as is. `learnable`: chosen responses use the first
    half of the word list and rejected ones the second, a signal a reward model can pick up."""
    rng = random.Random(seed)
    half = len(words) // 2
    text = lambda lo, hi, pool: " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    good, bad = (words[:half], words[half:]) if learnable else (words, words)
    return [
        {
            "prompt": [{"role": "user", "content": text(*prompt, words)}],
            "chosen": [{"role": "assistant", "content": text(*response, good)}],
            "rejected": [{"role": "assistant", "content": text(*response, bad)}],
        }
        for _ in range(n)
    ]


def hh_rows(path: Path = HH_FILE) -> list[dict]:
    """The HH-RLHF file as TRL conversational rows (prompt messages, chosen, rejected), through gpmctl's reader."""
    from gpmctl.data.formats import ReadOptions
    from gpmctl.data.sources import read_source

    return [
        {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
        for r in read_source(str(path), options=ReadOptions(allow_empty_responses=True))
    ]


def hh_shaped_pairs(words: list[str], n: int, seed: int) -> list[dict]:
    """Synthetic one-token words with (prompt, chosen, rejected) token counts drawn jointly from the HH rows,
    counted by the tiny tokenizer on the message contents (a multi-turn prompt's turns kept as turns)."""
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    count = lambda text: max(1, len(tok(text, add_special_tokens=False)["input_ids"]))  # noqa: E731
    rng = random.Random(seed)
    rows = hh_rows()
    text = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    out = []
    for _ in range(n):
        row = rng.choice(rows)
        prompt = [{"role": m["role"], "content": text(count(m["content"]))} for m in row["prompt"]]
        out.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": text(count(row["chosen"][-1]["content"]))}],
                "rejected": [{"role": "assistant", "content": text(count(row["rejected"][-1]["content"]))}],
            }
        )
    return out


def profile_pairs(profile: str, words: list[str], n: int) -> list[dict]:
    if profile == "synthetic":
        return synthetic_pairs(words, n, seed=1)
    if profile == "hh":
        return hh_shaped_pairs(words, n, seed=1)
    rows = hh_rows()
    return [rows[i % len(rows)] for i in range(n)]  # the file's first pairs; gpmctl's epoch order shuffles them


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def model_folder(workdir: Path, name: str) -> Path:
    """A Llama backbone built from config with fixed seed and saved with the tiny tokenizer, once."""
    folder = workdir / f"model_{name}"
    if not (folder / "config.json").exists():
        import torch
        from transformers import AutoModel, LlamaConfig

        from gpmctl.models.sources import load_tokenizer

        tok = load_tokenizer("tiny")
        config = LlamaConfig(
            **MODELS[name],
            max_position_embeddings=2048,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
        if name == "1b":
            model.to(torch.bfloat16)  # for GPUs: half the bytes to write and read
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def batch_order(n: int) -> list[int]:
    """gpmctl's epoch-0 order of the pairs, so TRL (sequential sampler) sees the same batches."""
    from gpmctl.data.batches import epoch_batches

    return [i for batch in epoch_batches(n, BATCH, SEED, 0) for i in batch]


# ----------------------------------------------------------------------------------------------------
# Workers: one contender per process; each prints one JSON line


def run_gpmctl(args, overrides: list[str]) -> dict:
    """`gpmctl train-rm` in process: the recipe below plus the contender's overrides."""
    from gpmctl.config import load_recipe
    from gpmctl.train.reward import train_reward_model

    out = Path(args.workdir) / f"run_{args.model}_{args.worker}_{os.getpid()}"
    recipe = load_recipe(
        None,
        [
            f"output_dir={out}",
            f"model.backbone={args.folder}",
            "model.kind=bt",
            f"data.train={args.data}",
            f"data.eval={args.eval_data or 'null'}",
            "data.max_length=1024",
            "data.allow_empty_responses=true",  # HH-RLHF prefers a few empty replies
            f"train.batch_size={BATCH}",
            "train.grad_accum=1",
            f"train.lr={args.lr}",
            f"train.max_steps={args.warmup + args.steps}",
            "train.logging_steps=1",
            "train.keep_best=false",
            f"train.precision={args.precision}",
            f"train.seed={SEED}",
            "train.weight_decay=0",
            "train.warmup_ratio=0.03",
            f"train.eval_steps={10**9}",
            *overrides,
        ],
    )
    result = train_reward_model(recipe, overwrite=True, save=False)  # no model folder: the timing is in log.jsonl
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["event"] == "train"]
    timed = steps[args.warmup :]
    seconds = timed[-1]["time"] - steps[args.warmup - 1]["time"]
    # Each record's window is one step: tokens = its tokens/s x its window length (pairs / pairs/s).
    computed = sum(r["tokens_per_s"] * BATCH / r["pairs_per_s"] for r in timed)
    real = sum(r["sequence_tokens_per_s"] * BATCH / r["pairs_per_s"] for r in timed)
    return {
        "seconds": seconds,
        "steps": len(timed),
        "pairs": BATCH * len(timed),
        "real_tokens": round(real),
        "computed_tokens": round(computed),
        "attention_pairs": attention_pairs(
            recipe, args.warmup, args.warmup + args.steps, "packing=false" not in " ".join(overrides)
        ),
        "eval_accuracy": result.final_metrics.get("accuracy"),
    }


def attention_pairs(recipe, first_step: int, end_step: int, packed: bool) -> int:
    """Query-key pairs the timed steps' attention computed (no causal discount): per block of n tokens after
    a prefix of p, n x (p + n); a padded batch is 2B rows of its longest length."""
    from gpmctl.data.batches import epoch_batches
    from gpmctl.data.tokenize import SequenceEncoder, shared_prefix_length
    from gpmctl.models.sources import load_tokenizer
    from gpmctl.train.reward import load_pairs

    m, d, t = recipe.model, recipe.data, recipe.train
    encoder = SequenceEncoder(load_tokenizer(m.backbone), d.max_length, m.resolved_eos(), m.gate_prompt, d.truncation)
    pairs, _ = load_pairs(recipe, encoder)
    shared = packed and t.share_prompt is not False
    total = 0
    for batch in epoch_batches(len(pairs), BATCH, SEED, 0)[first_step:end_step]:
        if not packed:
            longest = max(max(len(pairs[i].chosen.ids), len(pairs[i].rejected.ids)) for i in batch)
            total += 2 * len(batch) * longest**2
            continue
        for i in batch:
            seqs = [pairs[i].chosen, pairs[i].rejected]
            p = shared_prefix_length(seqs) if shared else 0
            total += p * p + sum((len(s.ids) - p) * len(s.ids) for s in seqs)
    return total


def run_trl(args, _overrides) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    rows = [rows[i] for i in batch_order(len(rows))]
    tok = AutoTokenizer.from_pretrained(args.folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.folder, num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    stamps, tokens = [], []

    class Stamp(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

    class CountingCollator(DataCollatorForPreference):
        """TRL's own collator, counting the real tokens of each batch."""

        def torch_call(self, examples):
            batch = super().torch_call(examples)
            tokens.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
            return batch

    config = RewardConfig(
        output_dir=str(Path(args.workdir) / f"trl_{os.getpid()}"),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        adam_beta2=0.95,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        max_length=1024,
        max_steps=args.warmup + args.steps,
        train_sampling_strategy="sequential",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=SEED,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        data_collator=CountingCollator(pad_token_id=tok.pad_token_id),
        callbacks=[Stamp()],
    )
    trainer.train()
    # The collator runs ahead of the step (prefetch): batch i belongs to step i.
    timed = tokens[args.warmup : args.warmup + args.steps]
    result = {
        "seconds": stamps[-1] - stamps[args.warmup - 1],
        "steps": len(stamps) - args.warmup,
        "pairs": BATCH * (len(stamps) - args.warmup),
        "real_tokens": sum(real for real, _ in timed),
        "computed_tokens": sum(padded for _, padded in timed),
        "eval_accuracy": None,
    }
    if args.eval_data:
        result["eval_accuracy"] = trl_accuracy(trainer.model, tok, Path(args.eval_data))
    return result


def trl_accuracy(model, tok, path: Path) -> float:
    """Held-out pair accuracy of a sequence classifier (reward(chosen) > reward(rejected), ties wrong),
    rendering each pair with the chat template as TRL's training did."""
    import torch

    model.eval()
    correct = n = 0
    with torch.no_grad():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rewards = [
                model(
                    **tok(
                        tok.apply_chat_template(row["prompt"] + row[side], tokenize=False),
                        return_tensors="pt",
                        add_special_tokens=False,
                    )
                ).logits[0, 0]
                for side in ("chosen", "rejected")
            ]
            correct += int(rewards[0] > rewards[1])
            n += 1
    return correct / n


def worker(args) -> None:
    import torch

    runner, overrides = CONTENDERS[args.worker]
    result = (run_trl if runner == "trl" else run_gpmctl)(args, overrides)
    result.update(
        contender=args.worker + ("_tcmalloc" if os.environ.get("LD_PRELOAD") else ""),
        model=args.model,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        loadavg=os.getloadavg(),
    )
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------
# The driver


def spawn(args, model: str, contender: str, data: Path, warmup: int, steps: int, tcmalloc=False, eval_data=None, lr=LR) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        contender,
        "--model",
        model,
        "--folder",
        str(model_folder(Path(args.workdir), model)),
        "--data",
        str(data),
        "--workdir",
        args.workdir,
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--lr",
        str(lr),
        "--batch",
        str(BATCH),
        "--precision",
        args.precision,
    ]
    if eval_data:
        cmd += ["--eval-data", str(eval_data)]
    env = {**os.environ, **({"LD_PRELOAD": TCMALLOC} if tcmalloc else {})}
    started = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{contender} ({model}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    print(f"  {result['contender']:<24} {model:<5} done in {time.time() - started:.0f}s", file=sys.stderr, flush=True)
    return result


def flop_shape(folder: Path) -> dict:
    """Non-embedding parameters, layers and hidden size of a model folder (for MFU)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)
    model = AutoModel.from_config(config)
    params = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    return {"params": params, "layers": config.num_hidden_layers, "hidden": config.hidden_size}


def summarise(runs: list[dict], shape: dict, peak_gflops: float) -> dict:
    """The repeats of one contender -> medians, spread, peak RSS, MFU (gpmctl rows)."""
    rate = lambda key: [r[key] / r["seconds"] for r in runs]  # noqa: E731
    pairs = rate("pairs")
    out = {
        "contender": runs[0]["contender"],
        "runs": len(runs),
        "steps": runs[0]["steps"],
        "pairs_per_s": statistics.median(pairs),
        "spread": (min(pairs), max(pairs)),
        "real_tok_s": statistics.median(rate("real_tokens")),
        "computed_tok_s": statistics.median(rate("computed_tokens")),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_gpu_mib": max(r.get("peak_gpu_mib") or 0 for r in runs) or None,
        "loadavg": statistics.median(r["loadavg"][0] for r in runs),
        "mfu": None,
    }
    if all("attention_pairs" in r for r in runs):
        flops = [
            (6 * shape["params"] * r["computed_tokens"] + 12 * shape["layers"] * shape["hidden"] * r["attention_pairs"])
            / r["seconds"]
            for r in runs
        ]
        out["mfu"] = statistics.median(flops) / (peak_gflops * 1e9)
    return out


def table(rows: list[dict], reference: dict | None) -> str:
    """Markdown rows of `summarise`d contenders; the ratio columns compare medians with `reference` (TRL's)."""
    head = (
        "| contender | runs x steps | pairs/s (median) | spread | real tok/s | computed tok/s | MFU | peak RSS (/ GPU) MiB "
        "| pairs/s vs TRL | real tok/s vs TRL | load avg (1 min) |\n"
    )
    head += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        vs_pairs = vs_tok = "-"
        if reference is not None:
            vs_pairs = f"{r['pairs_per_s'] / reference['pairs_per_s']:.2f}x"
            vs_tok = f"{r['real_tok_s'] / reference['real_tok_s']:.2f}x"
        mfu = f"{r['mfu']:.0%}" if r["mfu"] is not None else "-"
        memory = f"{r['peak_rss_mib']:,.0f}" + (f" / {r['peak_gpu_mib']:,.0f}" if r["peak_gpu_mib"] else "")
        lines.append(
            f"| {r['contender']} | {r['runs']} x {r['steps']} | {r['pairs_per_s']:.2f} | {r['spread'][0]:.2f}-{r['spread'][1]:.2f} "
            f"| {r['real_tok_s']:,.0f} | {r['computed_tok_s']:,.0f} | {mfu} | {memory} | {vs_pairs} | {vs_tok} "
            f"| {r['loadavg']:.2f} |"
        )
    return head + "\n".join(lines)


def main() -> None:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short timing windows (tiny 10+50, 50M 3+10 steps)")
    ap.add_argument("--models", default="tiny,50m", help="comma-separated: tiny, 50m")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated, from: " + ", ".join(CONTENDERS))
    ap.add_argument("--tcmalloc", action="store_true", help=f"also run TRL and gpmctl with LD_PRELOAD={TCMALLOC}")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the equal-accuracy comparison")
    ap.add_argument("--profiles", default="synthetic,hh,hh_real", help="comma-separated: synthetic, hh, hh_real")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each window (median and spread reported)")
    ap.add_argument("--batch", type=int, default=BATCH, help="pairs per step")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: on a GPU (gpmctl rows only)")
    ap.add_argument("--workdir", default="/tmp/gpmctl_bench_train", help="data, model folders and run folders")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    for hidden in ("--model", "--folder", "--data", "--eval-data"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, default=LR, help=argparse.SUPPRESS)
    args = ap.parse_args()
    BATCH = args.batch
    if args.worker:
        return worker(args)

    from gpmctl.models.sources import load_tokenizer

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    words = one_token_words(load_tokenizer("tiny"))
    import torch

    print(
        f"# train throughput: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.precision}, batch {BATCH} pairs, BT loss unless named\n"
    )
    contenders = args.contenders.split(",")
    tcmalloc = args.tcmalloc and Path(TCMALLOC).exists()
    if args.tcmalloc and not tcmalloc:
        print(f"(no {TCMALLOC}: tcmalloc rows skipped; apt-get install libtcmalloc-minimal4)\n")
    from mfu import matmul_peak

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(device=device, dtype=dtype)
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{args.precision} matmul peak measured before the runs ({card}): {peak:,.0f} GFLOP/s\n", flush=True)
    for model in args.models.split(","):
        warmup, steps = WINDOWS["quick" if args.quick else "full"][model]
        shape = flop_shape(model_folder(workdir, model))
        for profile in args.profiles.split(","):
            data = workdir / f"pairs_{model}_{profile}.jsonl"
            write_jsonl(data, profile_pairs(profile, words, BATCH * (warmup + steps)))
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeats):  # rounds: each contender once per round
                for c in contenders:
                    r = spawn(args, model, c, data, warmup, steps)
                    runs.setdefault(r["contender"], []).append(r)
                for c in ("trl", "gpmctl") if tcmalloc else ():
                    if c in contenders:
                        r = spawn(args, model, c, data, warmup, steps, tcmalloc=True)
                        runs.setdefault(r["contender"], []).append(r)
            rows = [summarise(v, shape, peak) for v in runs.values()]
            print(f"## {model}, {profile} profile: {warmup} warm-up + {steps} timed steps, {args.repeats} runs each\n")
            print(table(rows, next((r for r in rows if r["contender"] == "trl"), None)) + "\n", flush=True)
    print(
        f"{args.precision} matmul peak after the runs: {matmul_peak(device=device, dtype=dtype):,.0f} GFLOP/s (MFU uses the one before)\n"
    )

    if not args.skip_accuracy:
        task = ACCURACY_TASK
        train, held = workdir / "learnable_train.jsonl", workdir / "learnable_eval.jsonl"
        write_jsonl(train, synthetic_pairs(words, task["pairs"], seed=2, prompt=(8, 32), response=(8, 64), learnable=True))
        write_jsonl(held, synthetic_pairs(words, task["eval_pairs"], seed=3, prompt=(8, 32), response=(8, 64), learnable=True))
        rows = [spawn(args, "tiny", c, train, 1, task["steps"] - 1, eval_data=held, lr=task["lr"]) for c in ("trl", "gpmctl")]
        print(
            f"## equal accuracy: tiny model, learnable task, {task['steps']} steps of {BATCH} pairs, lr {task['lr']}, "
            f"{task['eval_pairs']} held-out pairs\n"
        )
        print("| contender | held-out accuracy | pairs/s |\n|---|---:|---:|")
        for r in rows:
            print(f"| {r['contender']} | {r['eval_accuracy']:.3f} | {r['pairs'] / r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
