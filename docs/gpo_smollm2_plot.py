"""Win rates against pi_0 (training judge and independent judge, +- one standard error over prompts) and mean
held-out response length per iteration, for train-gpo runs (docs/results/gpo_smollm2.md).

    python docs/gpo_smollm2_plot.py runs/gpo_smollm2/gpo runs/gpo_smollm2/sppo -o docs/gpo_smollm2.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="train-gpo output folders (each with metrics.json)")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()

    from gpmctl.plot import pyplot

    plt = pyplot()
    fig, (wins, lengths) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in args.runs:
        summary = json.loads((Path(run) / "metrics.json").read_text())
        its = summary["iterations"]
        name = its[0]["loss"].upper()
        x = [0] + [m["iteration"] for m in its]
        for key, style, judge in (
            ("win_rate_vs_initial", "-o", "training judge (A)"),
            ("eval_judge_win_rate_vs_initial", "--s", "independent judge (B)"),
        ):
            y = [0.5] + [m[key] for m in its]
            se = [0.0] + [m[f"{key}_se"] for m in its]
            wins.errorbar(x, y, yerr=se, fmt=style, capsize=3, label=f"{name}, {judge}")
        lengths.plot(x, [summary["initial"]["eval_mean_tokens"]] + [m["eval_mean_tokens"] for m in its], "-o", label=name)
    wins.axhline(0.5, color="grey", lw=0.8)
    wins.set(xlabel="iteration", ylabel="held-out win rate vs pi_0", xticks=x)
    wins.legend(fontsize=7)
    lengths.set(xlabel="iteration", ylabel="mean held-out response tokens", xticks=x, ylim=(0, None))
    lengths.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)


if __name__ == "__main__":
    main()
