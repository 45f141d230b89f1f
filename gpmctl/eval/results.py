"""The results files of `gpmctl eval BENCHMARK -o FILE` as numbers to draw (`gpmctl plot eval`).

Each benchmark has an adapter: `recognise(doc)` says whether a results JSON is its own, and `chart(doc)` maps
it to sections -> subsets -> values, each section with its own score where the benchmark has one, and the
benchmark's headline number. Every number is taken from the file as the evaluator wrote it, never
recomputed; `read_result` checks them (a number in [0, 1]-ish or null) and names the file of a bad one.

A new benchmark needs one entry in ADAPTERS, e.g. for a file {"accuracy": 0.7, "by_source": {name: {"accuracy": ...}}}:

    def judgebench_chart(doc: dict) -> Chart:
        by_source = {name: m["accuracy"] for name, m in doc["by_source"].items()}
        return Chart([Section("source", by_source)], ("accuracy", doc["accuracy"]))

    ADAPTERS["judgebench"] = Adapter("JudgeBench", lambda doc: "by_source" in doc, judgebench_chart)

A file that has a "benchmark" key naming an adapter is read by that adapter; others by the first adapter
that recognises their keys (in ADAPTERS order: cyclic before pairs, whose keys it extends).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpmctl.errors import ConfigError, DataError


@dataclass
class Section:
    """A group of bars: subset -> value (None: no bar), and a line across them (label, value) for the
    section's own score as the file gives it (RewardBench's weighted section score, an RM-Bench domain's average)."""

    name: str
    values: dict[str, float | None]
    line: tuple[str, float | None] | None = None


@dataclass
class Chart:
    """One results file's bars, and the benchmark's headline number (label, value) for the title."""

    sections: list[Section]
    headline: tuple[str, float | None]


@dataclass(frozen=True)
class Adapter:
    title: str
    recognise: Callable[[dict], bool]
    chart: Callable[[dict], Chart]


@dataclass
class Result:
    """A results file read through its benchmark's adapter."""

    path: str
    benchmark: str  # a key of ADAPTERS
    model: str  # its "model" (or gpmctl.model_path), else the file's name
    chart: Chart

    @property
    def title(self) -> str:
        return ADAPTERS[self.benchmark].title


# ----------------------------------------------------------------------------------------------------
# The adapters


def rewardbench_chart(doc: dict) -> Chart:
    """RewardBench v1: the 23 subsets by section; each section's line is its score as the file gives it
    (count-weighted; RewardBench's own per-subset eval-set files, which have no sections, get the official
    weights of gpmctl.eval.rewardbench.section_scores)."""
    from gpmctl.eval import rewardbench as rb

    sections = doc["sections"] if "sections" in doc else rb.section_scores(doc)
    score = doc["score"] if "sections" in doc else rb.overall_score(sections)
    return Chart(
        [
            Section(name, {s: doc[s] for s in subsets if s in doc}, ("section score", sections.get(name)))
            for name, subsets in rb.SUBSET_MAPPING.items()
        ],
        ("Score", score),
    )


def rewardbench2_chart(doc: dict) -> Chart:
    """RewardBench 2: the six subsets (the official order, then any other), Score = their unweighted mean."""
    from gpmctl.eval.rewardbench2 import SUBSET_ROWS

    subsets = doc["subsets"]
    names = [s for s in SUBSET_ROWS if s in subsets] + [s for s in subsets if s not in SUBSET_ROWS]
    score = doc["score"]
    return Chart([Section("subsets", {s: subsets[s] for s in names}, ("Score (mean of the 6)", score))], ("Score", score))


def rmbench_chart(doc: dict) -> Chart:
    """RM-Bench: easy / normal / hard per domain, the domain's average as its line; then the overall ones."""
    difficulties = ("easy", "normal", "hard")
    sections = [
        Section(name, {k: d[k] for k in difficulties}, ("average of easy, normal, hard", d["average"]))
        for name, d in doc["domains"].items()
    ]
    if doc["domains"]:
        sections.append(Section("overall", {k: doc[k] for k in difficulties}, ("average of easy, normal, hard", doc["overall"])))
    return Chart(sections, ("overall", doc.get("overall")))


def pairs_chart(doc: dict) -> Chart:
    """Any preference file: accuracy of all pairs, then per subset and per kind (when the data has them)."""
    sections = [Section("all", {"accuracy": doc["accuracy"]})]
    sections += [
        Section(key, {value: m.get("accuracy") for value, m in doc[f"by_{key}"].items()})
        for key in ("subset", "kind")
        if doc.get(f"by_{key}")
    ]
    return Chart(sections, ("accuracy", doc["accuracy"]))


def cyclic_chart(doc: dict) -> Chart:
    """Cyclic sets: pair accuracy against the BT ceiling (the best a scalar reward can reach), the cycles, kinds."""
    chart = pairs_chart({k: v for k, v in doc.items() if k != "by_subset"})
    chart.sections[0].line = ("BT ceiling", doc.get("bt_ceiling"))
    cycles = Section("cycles", {"mean cycle accuracy": doc["mean_cycle_accuracy"], "all pairs right": doc["cycles_all_right"]})
    chart.sections.insert(1, cycles)
    return chart


def judgebench_chart(doc: dict) -> Chart:
    """JudgeBench: per file (response model) the four categories' accuracy, Overall (pooled over the file's pairs)
    as its line; the headline is the first file's Overall."""
    sections = [
        Section(
            f.get("response_model") or name,
            {cat: m["accuracy"] for cat, m in f["categories"].items()},
            ("overall (pooled)", f["overall"]["accuracy"]),
        )
        for name, f in doc["files"].items()
    ]
    first = next(iter(doc["files"].values()), None)
    return Chart(sections, ("overall", first["overall"]["accuracy"] if first else None))


def rmb_chart(doc: dict) -> Chart:
    """RMB: the four numbers (Pairwise / BoN x Helpfulness / Harmlessness) and overall, their mean."""
    from gpmctl.eval.rmb import NUMBERS

    return Chart(
        [Section("RMB", {name: doc[name] for name in NUMBERS}, ("overall (mean of 4)", doc["overall"]))],
        ("overall", doc["overall"]),
    )


def _is_rewardbench(doc: dict) -> bool:
    from gpmctl.eval.rewardbench import EXAMPLE_COUNTS

    return any(subset in doc for subset in EXAMPLE_COUNTS)


ADAPTERS: dict[str, Adapter] = {
    "rewardbench": Adapter("RewardBench", _is_rewardbench, rewardbench_chart),
    "rewardbench2": Adapter("RewardBench 2", lambda doc: "subsets" in doc and "ties" in doc, rewardbench2_chart),
    "rmbench": Adapter("RM-Bench", lambda doc: "domains" in doc and "missing_domains" in doc, rmbench_chart),
    "judgebench": Adapter("JudgeBench", lambda doc: "files" in doc and "both_orders" in doc, judgebench_chart),
    "rmb": Adapter("RMB", lambda doc: "overall_definition" in doc and "scenarios" in doc, rmb_chart),
    "cyclic": Adapter("cyclic preferences", lambda doc: "per_cycle" in doc and "reliability" in doc, cyclic_chart),
    "pairs": Adapter("preference pairs", lambda doc: "reliability" in doc and "pairs" in doc, pairs_chart),
}


# ----------------------------------------------------------------------------------------------------
# Reading


def benchmark_of(doc) -> str | None:
    """The ADAPTERS key of a results JSON: its "benchmark" key when that names one, else the first that recognises it."""
    if not isinstance(doc, dict):
        return None
    named = doc.get("benchmark")
    if isinstance(named, str) and named in ADAPTERS:
        return named
    return next((name for name, adapter in ADAPTERS.items() if adapter.recognise(doc)), None)


def read_result(path: str) -> Result:
    """A results file -> Result; a file that is no eval result, or lacks or garbles a number, is one DataError."""
    from gpmctl.eval.examples import json_document

    expected = f"the JSON `gpmctl eval {'|'.join(ADAPTERS)} -o FILE` writes"
    try:
        doc = json_document(path)
    except DataError as e:
        if e.line is None and e.problem == "no such file":
            raise
        raise DataError(path, f"not a gpmctl eval result: {e.problem}; expected {expected}") from None
    name = benchmark_of(doc)
    if name is None:
        raise DataError(path, f"not a gpmctl eval result (expected {expected})")
    adapter = ADAPTERS[name]
    try:
        chart = adapter.chart(doc)
    except (KeyError, TypeError, AttributeError) as e:
        problem = f"has no {e.args[0]!r} key" if isinstance(e, KeyError) else f"holds a value of the wrong type ({e})"
        raise DataError(path, f"looks like {adapter.title} results but {problem}") from None
    for label, value in _numbers(chart):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise DataError(path, f"expected a number, got {value!r}", field=label)
    chart.sections = [s for s in chart.sections if s.values]  # e.g. a RewardBench section none of whose subsets ran
    if not any(v is not None for s in chart.sections for v in s.values.values()):
        raise DataError(path, f"holds no {adapter.title} numbers to plot")
    return Result(str(path), name, _model_name(doc, path), chart)


def read_results(paths: list[str]) -> list[Result]:
    """Results files to draw together: all of one benchmark (else one ConfigError line naming two that differ),
    each labelled by its model, or by its file when two models share a name."""
    results = [read_result(p) for p in paths]
    other = next((r for r in results if r.benchmark != results[0].benchmark), None)
    if other is not None:
        first = results[0]
        raise ConfigError(
            f"{first.path} holds {first.title} results and {other.path} {other.title} results: "
            "a comparison needs files of one benchmark"
        )
    for key in (lambda r: Path(r.path).name, lambda r: r.path):
        if len({r.model for r in results}) == len(results):
            break
        for r in results:
            r.model = key(r)
    return results


def bar_layout(results: list[Result]) -> list[tuple[str, list[str]]]:
    """(section, its subsets) over all results, in first-seen order: the x axis of a comparison."""
    layout: dict[str, list[str]] = {}
    for r in results:
        for section in r.chart.sections:
            subsets = layout.setdefault(section.name, [])
            subsets += [s for s in section.values if s not in subsets]
    return list(layout.items())


def _numbers(chart: Chart):
    yield chart.headline
    for section in chart.sections:
        yield from ((f"{section.name}/{subset}", value) for subset, value in section.values.items())
        if section.line is not None:
            yield f"{section.name}/{section.line[0]}", section.line[1]


def _model_name(doc: dict, path: str) -> str:
    settings = doc.get("gpmctl") if isinstance(doc.get("gpmctl"), dict) else {}
    for value in (doc.get("model"), settings.get("model_path")):
        if isinstance(value, str) and value:
            return value
    return Path(path).name
