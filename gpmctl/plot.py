"""Pictures of a run (matplotlib, an optional extra: pip install 'gpmctl[plot]').

    training_curves(read_log(log.jsonl))  loss, accuracy and learning rate per step; eval accuracy
    embedding_planes(model, records)      each 2-D block of a GPM's embeddings, one point per response
    reliability_diagram(read_probabilities(examples.jsonl))
                                          predicted P(chosen > rejected) against observed frequency
    eval_bars(read_results([result.json, ...]))
                                          a benchmark's subsets by section, one colour per results file
The readers check every value they plot (file:line: field), so a bad file stops before a picture is drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpmctl.errors import ConfigError, DataError

# The numbers each event of a train-rm log.jsonl contributes to the curves.
CURVE_KEYS = {"train": ("step", "loss", "accuracy", "lr"), "eval": ("step", "eval/loss", "eval/accuracy")}


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'gpmctl[plot]'") from None
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


def eval_bars(results: list, out: Path) -> Path:
    """Bars of `gpmctl.eval.results.read_results(...)`: each section's subsets side by side, a section's own score
    as a dashed line across its bars; one file: a colour per section, several: a colour per file (its model)."""
    from matplotlib.ticker import PercentFormatter

    from gpmctl.eval.results import bar_layout

    plt = pyplot()
    layout, n = bar_layout(results), len(results)
    centres, spans, x = {}, [], 0.0
    for section, subsets in layout:
        spans.append((section, x, x + len(subsets) - 1))
        for subset in subsets:
            centres[(section, subset)] = x
            x += 1
        x += 0.6  # a gap between sections
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.4, 2.5 + 0.32 * len(centres) * (1 + 0.35 * (n - 1)))), 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    values = []
    for i, result in enumerate(results):
        sections = {s.name: s for s in result.chart.sections}
        offset = (i - (n - 1) / 2) * width
        legend = f"{result.model} ({_headline(result)})" if n > 1 else None  # on the file's first bars
        for j, (section, lo, hi) in enumerate(spans):
            if section not in sections:
                continue
            colour = colours[(i if n > 1 else j) % len(colours)]
            bars = [(centres[(section, k)] + offset, v) for k, v in sections[section].values.items() if v is not None]
            ax.bar([b[0] for b in bars], [b[1] for b in bars], width=width, color=colour, label=legend)
            legend = None
            values += [b[1] for b in bars]
            line = sections[section].line
            if line is not None and line[1] is not None:
                label = line[0] if n == 1 and line[0] not in ax.get_legend_handles_labels()[1] else None
                ax.hlines(line[1], lo - 0.45, hi + 0.45, colors="black" if n == 1 else colour, linestyles="--", label=label)
                if n == 1:
                    at, shift = (hi + 0.45, line[1]), (0, 2)  # above the line's right end
                    ax.annotate(_percent(line[1]), at, xytext=shift, textcoords="offset points", ha="right", fontsize=7)
                values.append(line[1])
    for section, lo, hi in spans:
        ax.text((lo + hi) / 2, 1.01, section, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9)
        if lo > 0:
            ax.axvline(lo - 0.8, color="grey", lw=0.5)
    ax.set_xticks(list(centres.values()), [subset for _, subset in centres], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.8, x - 0.8)
    ax.set_ylim(min(0.0, min(values, default=0.0) * 1.1), max(1.0, max(values, default=1.0)) * 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.grid(axis="y", alpha=0.3)
    first = results[0]
    ax.set_title(first.title if n > 1 else f"{first.title}: {first.model}, {_headline(first)}", pad=20)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out)


def _headline(result) -> str:
    label, value = result.chart.headline
    return f"{label} {_percent(value)}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _save(fig, out: Path) -> Path:
    """Lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    from gpmctl.utils import atomic_path

    fig.tight_layout()
    with atomic_path(out) as tmp:  # never half a picture
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(out).suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return out
