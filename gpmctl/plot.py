"""Pictures of a run (matplotlib, an optional extra: pip install 'gpmctl[plot]').

    training_curves(read_log(log.jsonl))  loss, accuracy and learning rate per step; eval accuracy
    embedding_planes(model, records)      each 2-D block of a GPM's embeddings, one point per response
    reliability_diagram(read_probabilities(examples.jsonl))
                                          predicted P(chosen > rejected) against observed frequency
The readers check every value they plot (file:line: field), so a bad file stops before a picture is drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpmctl.errors import DataError, GpmctlError

# The numbers each event of a train-rm log.jsonl contributes to the curves.
CURVE_KEYS = {"train": ("step", "loss", "accuracy", "lr"), "eval": ("step", "eval/loss", "eval/accuracy")}


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise GpmctlError("plots need matplotlib: pip install 'gpmctl[plot]'") from None
    return plt


def read_log(log_path: Path) -> dict[str, list[dict]]:
    """{"train": events, "eval": events} of a train-rm log.jsonl. Each plotted value is a number or absent
    (NaN too: a diverged run is worth seeing); `step` is required."""
    from gpmctl.data.files import file_rows

    events = {kind: [] for kind in CURVE_KEYS}
    for number, event in file_rows(log_path):
        kind = event.get("event") if isinstance(event, dict) else None
        for key in CURVE_KEYS.get(kind, ()):
            value = event.get(key)
            if not (value is None and key != "step") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(
                    str(log_path), "missing" if value is None else f"expected a number, got {value!r}", line=number, field=key
                )
        if kind in events:
            events[kind].append(event)
    if not events["train"]:
        raise DataError(str(log_path), "no training events to plot")
    return events


def read_probabilities(path: str) -> list[float]:
    """P(chosen > rejected) of each row of a per-example file (`p`, checked in [0, 1])."""
    from gpmctl.eval.examples import example_fields

    return [fields.probability("p") for fields in example_fields(path)]


def training_curves(events: dict[str, list[dict]], out: Path, title: str) -> Path:
    """The curves of `read_log(...)` events."""
    plt = pyplot()
    train, evals = events["train"], events["eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [e["step"] for e in train]
    axes[0].plot(steps, [e.get("loss") for e in train], label="train")
    if evals:
        axes[0].plot([e["step"] for e in evals], [e.get("eval/loss") for e in evals], "o-", label="eval")
    axes[0].set(title="loss", xlabel="step")
    axes[1].plot(steps, [e.get("accuracy") for e in train], label="train")
    if evals:
        axes[1].plot([e["step"] for e in evals], [e.get("eval/accuracy") for e in evals], "o-", label="eval")
    axes[1].set(title="pair accuracy", xlabel="step", ylim=(0, 1.02))
    axes[2].plot(steps, [e.get("lr") for e in train])
    axes[2].set(title="learning rate", xlabel="step")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, out)


def embedding_planes(model, tokenizer, records: list, out: Path, label_key: str | None = None, limit: int = 400) -> Path:
    """Scatter every 2-D block (v[2l], v[2l+1]) of a GPM's response embeddings; a cyclic set shows its rotation."""
    import torch

    from gpmctl.models.embed import embed_sequences, model_encoder

    plt = pyplot()
    seen, texts, labels, seqs = set(), [], [], []
    encoder = model_encoder(model, tokenizer, 512)
    for r in records:
        for side, response in (("chosen", r.chosen), ("rejected", r.rejected)):
            key = json.dumps(r.prompt[-1:] + response)
            if key in seen:
                continue
            seen.add(key)
            seqs.append(encoder.encode(r.prompt, response))
            texts.append(response[-1]["content"])
            meta = r.meta or {}
            labels.append(str(meta.get(f"{side}_item") or meta.get(label_key or "", "")))
        if len(seqs) >= limit:
            break
    value, _ = embed_sequences(model, seqs, 64, tokenizer.pad_token_id, "cpu")
    value = value.float()
    k = value.shape[1] // 2
    cols = min(k, 4)
    fig, axes = plt.subplots(1, cols, figsize=(3.6 * cols, 3.6), squeeze=False)
    names = sorted(set(labels))
    colors = {n: plt.cm.hsv(i / max(len(names), 1)) for i, n in enumerate(names)}
    for block, ax in enumerate(axes[0]):
        xs, ys = value[:, 2 * block], value[:, 2 * block + 1]
        ax.scatter(xs, ys, s=14, c=[colors[n] for n in labels], alpha=0.8)
        if len(names) <= 24:
            for name in names:
                idx = torch.tensor([lab == name for lab in labels])
                if name and idx.any():
                    ax.annotate(name, (float(xs[idx].mean()), float(ys[idx].mean())), fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(title=f"block {block} (v[{2 * block}], v[{2 * block + 1}])", aspect="equal")
    return _save(fig, out)


def reliability_diagram(p: list[float], out: Path, bins: int = 10) -> Path:
    """p = P(chosen > rejected) per pair (`read_probabilities`): calibration of the predicted probabilities.

    Each pair counts both ways round (p for chosen-first, 1 - p for rejected-first), so the diagram does
    not depend on which side a file calls chosen."""
    plt = pyplot()
    probs = list(p) + [1 - q for q in p]
    truth = [1.0] * len(p) + [0.0] * len(p)
    centers, observed, counts = [], [], []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [t for p, t in zip(probs, truth) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if sel:
            centers.append((lo + hi) / 2)
            observed.append(sum(sel) / len(sel))
            counts.append(len(sel))
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(centers, observed, width=0.9 / bins, alpha=0.7, label="observed")
    ax.set(xlabel="predicted P(first > second)", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title="reliability")
    ax.legend(loc="upper left")
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    """Lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
