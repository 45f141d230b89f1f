"""Deterministic intransitive ("rock-paper-scissors") preference data, the paper's headline experiment.

Construction:
  - `num_items` item words sit on a circle, item i at angle theta_i = 2*pi*i / num_items.
  - Item a beats item b iff sin(theta_b - theta_a) > 0, i.e. b lies less than half a turn ahead of a.
    Opposite items (sin == 0) are never compared. This global tournament is intransitive.
  - Each prompt gets one cycle of L evenly spaced items (o, o + n/L, o + 2n/L, ...). Every pair of
    cycle items with a defined winner is a comparison; for L = 3 that is the 3 links of a 3-cycle.
  - A response names one item. `style: word` (default) answers with the item's word alone;
    `style: sentence` renders it with random surface words ("Go with jade because it is calm and
    bold."), for pretrained backbones that can read a sentence. The prompt is context and never
    changes the winner.
  - Train rows compare every cycle link `train_renderings` times, plus (for a `transitive_fraction` of
    prompts) a transitive triple of neighbouring items.

Test splits, each asked with prompt wordings (template x topic) that no training prompt uses:
  - `reworded` (alias `test`): the training cycles again, one in four wordings held out; every
    comparison is a training comparison, so a lookup table of training labels answers all of it.
    In the sentence style the response texts never occur in the train file either.
  - `new_items` (needs `blend_prompts`): 3-cycles of items no training row names. A blend "red blue"
    of items i and j = i + d (0 < d < n/2) sits halfway between them on the circle, so its place
    (and every winner) can be read off its two words. The `blend_prompts` extra training prompts
    each carry a 3-cycle of single words and blends with d >= 2; the test cycles are made of the
    adjacent blends (d = 1) only, which sit at the same angles as the trained blends with odd d.
  - `new_edges` (needs `tournament_prompts`): held-out comparisons of a regular tournament on 7 more
    item words (each beats the next 3 around its own circle). Each of the `tournament_prompts` extra
    training prompts carries its 15 TRAINED edges; the test asks the 6 HELD_OUT_EDGES. Every
    placement of the 7 items on one circle (a one-block GPM) that gets the trained edges right gets
    the held-out ones right too, while the held-out edges are no training comparison.

Why Bradley-Terry is capped: a scalar reward orders the items on a line, and a line can agree with at
most 2 of the 3 links of a 3-cycle, so on 3-cycle test rows no scalar reward exceeds 2/3 accuracy.
A 2-D preference embedding with the rotation operator places the items on the circle itself and can
get every link right. `best_scalar_accuracy` computes this "BT ceiling" exactly for any rows.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from gpmctl.errors import ConfigError
from gpmctl.utils import atomic_write_text

# Single lowercase words, none of which occurs in the other word lists, so a response names one item.
ITEM_WORDS: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "gold",
    "silver",
    "copper",
    "amber",
    "ivory",
    "coral",
    "olive",
    "pearl",
    "jade",
    "oak",
    "pine",
    "cedar",
    "maple",
    "stone",
    "glass",
    "steel",
    "iron",
    "brass",
    "clay",
    "wool",
    "silk",
)
OPENERS: tuple[str, ...] = (
    "I would pick",
    "My choice is",
    "Go with",
    "Try",
    "Choose",
    "Pick",
    "I recommend",
    "I suggest",
    "Consider",
    "Definitely",
    "Honestly,",
    "Surely",
    "Clearly",
    "Best is",
    "The answer is",
)
CONNECTORS: tuple[str, ...] = (
    "because it is",
    "since it is",
    "as it looks",
    "which feels",
    "because it feels",
    "since it looks",
    "as it seems",
    "which is",
    "given it is",
    "for it is",
    "because it seems",
    "which looks",
)
ADJECTIVES: tuple[str, ...] = (
    "bright",
    "calm",
    "warm",
    "strong",
    "simple",
    "clean",
    "bold",
    "soft",
    "fresh",
    "quiet",
    "rich",
    "light",
    "smooth",
    "sharp",
    "gentle",
    "clear",
    "lively",
    "solid",
    "classic",
    "modern",
)
PROMPT_TEMPLATES: tuple[str, ...] = (
    "Which option suits a {topic} best?",
    "What would you pick for a {topic}?",
    "Recommend something for my {topic}.",
    "Help me choose for a {topic}.",
    "What is your pick for the {topic}?",
    "Any suggestion for a new {topic}?",
)
TOPICS: tuple[str, ...] = (
    "kitchen",
    "garden",
    "bedroom",
    "office",
    "poster",
    "jacket",
    "sofa",
    "bicycle",
    "wedding",
    "picnic",
    "website",
    "logo",
    "carpet",
    "lamp",
    "table",
    "hallway",
    "balcony",
    "notebook",
    "scarf",
    "kite",
)

# Every template x topic wording; one in four is kept for test prompts only (known words, new wording).
_WORDINGS = [(t, topic) for t in range(len(PROMPT_TEMPLATES)) for topic in range(len(TOPICS))]
TRAIN_PROMPTS = tuple(PROMPT_TEMPLATES[t].format(topic=TOPICS[c]) for t, c in _WORDINGS if (t + c) % 4)
HELDOUT_PROMPTS = tuple(PROMPT_TEMPLATES[t].format(topic=TOPICS[c]) for t, c in _WORDINGS if (t + c) % 4 == 0)
_MAX_RESAMPLES = 10_000  # a fresh test rendering is found in a few tries; this only stops a runaway loop
MAX_EXACT_ITEMS = 24  # the subset DP of best_scalar_accuracy holds 2**n floats
TEST_SPLITS = ("reworded", "new_items", "new_edges")
SPLIT_ALIASES = {"test": "reworded"}  # the name of `reworded` before the harder splits existed
_SPLIT_OPTION = {"new_items": "blend_prompts", "new_edges": "tournament_prompts"}  # the option that makes a split

# The new_edges tournament: items ITEM_WORDS[num_items : num_items + 7], item k beats k+1, k+2, k+3 (mod 7).
TOURNAMENT_SIZE = 7
# Its (winner, loser) edges that no training row holds: the 4-cycle 0 > 2 > 4 > 6 > 0, and 1 > 3, 4 > 5.
HELD_OUT_EDGES: tuple[tuple[int, int], ...] = ((0, 2), (2, 4), (4, 6), (6, 0), (1, 3), (4, 5))


@dataclass
class CyclicConfig:
    """Options of the cyclic data set; same options and seed give byte-identical files."""

    num_prompts: int = 200
    """Number of prompts; each carries one cycle."""
    num_items: int = 12
    """Items on the circle, at most len(ITEM_WORDS)."""
    cycle_lengths: tuple[int, ...] = (3,)
    """Cycle length L of each prompt, drawn uniformly from this tuple; each L >= 3 must divide num_items."""
    train_renderings: int = 4
    """Train pairs per comparison, each with fresh renderings of both items."""
    test_renderings: int = 2
    """Test pairs per comparison, with texts that never occur in the train file."""
    transitive_fraction: float = 0.3
    """Probability per prompt of an extra transitive triple of neighbouring items (train only)."""
    seed: int = 0
    """Seed of the one random.Random that draws everything."""
    style: str = "word"
    """Response wording: `word` (the item's word alone) or `sentence` (the item inside a random sentence)."""
    blend_prompts: int = 0
    """Extra training prompts, each a 3-cycle of words and two-word blends; >= 1 also writes the new_items split."""
    tournament_prompts: int = 0
    """Extra training prompts, each the 7-item tournament's trained edges; >= 1 also writes the new_edges split."""


def item_angle(item_index: int, num_items: int) -> float:
    """Angle theta_i = 2*pi*i / num_items of item i on the circle, in radians."""
    return 2 * math.pi * item_index / num_items


def prefers(a: int, b: int, num_items: int) -> bool | None:
    """True if item a beats item b, False if b beats a, None for a tie (same or opposite items).

    Same rule as sin(theta_b - theta_a) > 0, in integers: floats give sin(pi) = 1e-16 > 0.
    """
    ahead = (b - a) % num_items  # steps from a to b counter-clockwise
    if ahead == 0 or 2 * ahead == num_items:
        return None
    return 2 * ahead < num_items


def _check(cfg: CyclicConfig) -> None:
    """Raise ConfigError naming the first impossible option."""
    for name in ("num_prompts", "num_items", "train_renderings", "test_renderings"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"cyclic: {name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.num_items > len(ITEM_WORDS):
        raise ConfigError(f"cyclic: num_items must be <= {len(ITEM_WORDS)} (built-in item words), got {cfg.num_items}")
    if not 0.0 <= cfg.transitive_fraction <= 1.0:
        raise ConfigError(f"cyclic: transitive_fraction must be in [0, 1], got {cfg.transitive_fraction}")
    if cfg.transitive_fraction > 0 and cfg.num_items < 5:
        # neighbours o, o+1, o+2 form a tie (n=4) or a cycle (n=3) on so small a circle
        raise ConfigError(f"cyclic: transitive triples need num_items >= 5, got {cfg.num_items}")
    if cfg.style not in ("word", "sentence"):
        raise ConfigError(f"cyclic: style must be word or sentence, got {cfg.style!r}")
    if not cfg.cycle_lengths:
        raise ConfigError("cyclic: cycle_lengths must name at least one cycle length")
    for length in cfg.cycle_lengths:
        if length < 3:
            raise ConfigError(f"cyclic: cycle lengths must be >= 3, got {length}")
        if cfg.num_items % length:
            raise ConfigError(f"cyclic: cycle length {length} does not divide num_items={cfg.num_items}")
    for name in ("blend_prompts", "tournament_prompts"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"cyclic: {name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.blend_prompts and (cfg.num_items % 3 or cfg.num_items < 9):
        # 3-cycles on the 2n half-steps need 3 | 2n; n >= 9 gives trained blends (d = 3) at the new items' angles
        raise ConfigError(f"cyclic: blend_prompts need num_items divisible by 3 and >= 9, got {cfg.num_items}")
    if cfg.tournament_prompts and cfg.num_items + TOURNAMENT_SIZE > len(ITEM_WORDS):
        raise ConfigError(
            f"cyclic: tournament_prompts need num_items <= {len(ITEM_WORDS) - TOURNAMENT_SIZE} "
            f"({TOURNAMENT_SIZE} item words of their own), got {cfg.num_items}"
        )


def cycle_items(offset: int, length: int, num_items: int) -> list[int]:
    """The L evenly spaced items o + m*n/L (mod n), m = 0..L-1."""
    step = num_items // length
    return [(offset + m * step) % num_items for m in range(length)]


def comparisons(items: list[int], num_items: int) -> list[tuple[int, int]]:
    """Every (winner, loser) pair among `items` that has a defined winner, in a fixed order."""
    pairs = []
    for a, b in combinations(items, 2):
        a_wins = prefers(a, b, num_items)
        if a_wins is not None:
            pairs.append((a, b) if a_wins else (b, a))
    return pairs


def blend_items(num_items: int) -> tuple[dict[int, list[str]], dict[int, str]]:
    """The items of the blend cycles by place on a circle of 2 * num_items half-steps: (trained, new).

    Word i sits at half-step 2i; the blend "w_i w_j" of words i and j = i + d (0 < d < n/2) halfway
    between them, at 2i + d. Trained: the words and the blends with d >= 2 (a list per place); new:
    the adjacent blends (d = 1), one per odd place.
    """
    n, words = num_items, ITEM_WORDS
    trained: dict[int, list[str]] = {2 * i: [words[i]] for i in range(n)}
    new: dict[int, str] = {}
    for d in range(1, (n + 1) // 2):
        for i in range(n):
            name, place = f"{words[i]} {words[(i + d) % n]}", (2 * i + d) % (2 * n)
            if d == 1:
                new[place] = name
            else:
                trained.setdefault(place, []).append(name)
    return trained, new


def render(rng: random.Random, item: str, style: str = "sentence") -> str:
    """One response text naming `item`: "jade" (word style) or e.g. "Go with jade because it is calm and bold."."""
    if style == "word":
        return item
    adj1, adj2 = rng.sample(ADJECTIVES, 2)
    return f"{rng.choice(OPENERS)} {item} {rng.choice(CONNECTORS)} {adj1} and {adj2}."


def cyclic_splits(cfg: CyclicConfig) -> dict[str, list[dict]]:
    """Build {"train", "reworded", "new_items", "new_edges": rows}; see the module docstring for the
    construction and row format. A split whose option is 0 is an empty list."""
    _check(cfg)
    rng = random.Random(cfg.seed)
    n, words = cfg.num_items, ITEM_WORDS
    next_id = [0] * (cfg.num_prompts + cfg.blend_prompts + cfg.tournament_prompts)  # ids run on from train into test

    def row(p: int, prompt: str, kind: str, winner: str, loser: str, chosen: str, rejected: str) -> dict:
        next_id[p] += 1
        return {
            "id": f"cyc-{p}-{next_id[p] - 1}",
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "kind": kind,
            "cycle": p,
            "chosen_item": winner,
            "rejected_item": loser,
        }

    train: list[dict] = []

    def add_train(p: int, prompt: str, kind: str, pairs: list[tuple[str, str]]) -> None:
        for winner, loser in pairs:
            for _ in range(cfg.train_renderings):
                chosen, rejected = render(rng, winner, cfg.style), render(rng, loser, cfg.style)
                train.append(row(p, prompt, kind, winner, loser, chosen, rejected))

    def named(pairs: list[tuple[int, int]], name) -> list[tuple[str, str]]:
        return [(name[w], name[lo]) for w, lo in pairs]

    tests: list[tuple[str, int, str, str, list[tuple[str, str]]]] = []  # (split, prompt index, prompt, kind, pairs)
    for p in range(cfg.num_prompts):
        prompt, heldout_prompt = rng.choice(TRAIN_PROMPTS), rng.choice(HELDOUT_PROMPTS)
        length = rng.choice(cfg.cycle_lengths)
        pairs = named(comparisons(cycle_items(rng.randrange(n), length, n), n), words)
        tests.append(("reworded", p, heldout_prompt, "cycle", pairs))
        add_train(p, prompt, "cycle", pairs)
        if rng.random() < cfg.transitive_fraction:
            start = rng.randrange(n)
            add_train(p, prompt, "transitive", named(comparisons([start, (start + 1) % n, (start + 2) % n], n), words))

    trained_blends, new_blends = blend_items(n)
    for p in range(cfg.num_prompts, cfg.num_prompts + cfg.blend_prompts):
        prompt, heldout_prompt = rng.choice(TRAIN_PROMPTS), rng.choice(HELDOUT_PROMPTS)
        places = cycle_items(rng.randrange(2 * n), 3, 2 * n)
        add_train(p, prompt, "blend", named(comparisons(places, 2 * n), {q: rng.choice(trained_blends[q]) for q in places}))
        new_places = cycle_items(2 * rng.randrange(n) + 1, 3, 2 * n)  # odd places: adjacent blends only
        tests.append(("new_items", p, heldout_prompt, "blend", named(comparisons(new_places, 2 * n), new_blends)))

    tournament = words[n : n + TOURNAMENT_SIZE]
    edges = comparisons(list(range(TOURNAMENT_SIZE)), TOURNAMENT_SIZE)
    for p in range(cfg.num_prompts + cfg.blend_prompts, len(next_id)):
        prompt, heldout_prompt = rng.choice(TRAIN_PROMPTS), rng.choice(HELDOUT_PROMPTS)
        add_train(p, prompt, "tournament", named([e for e in edges if e not in HELD_OUT_EDGES], tournament))
        tests.append(("new_edges", p, heldout_prompt, "tournament", named(list(HELD_OUT_EDGES), tournament)))

    train_texts = {text for r in train for text in (r["chosen"], r["rejected"])}

    def fresh(item: str) -> str:
        if cfg.style == "word":
            return item
        for _ in range(_MAX_RESAMPLES):
            text = render(rng, item, cfg.style)
            if text not in train_texts:
                return text
        raise ConfigError(f"cyclic: no unseen rendering of {item!r} left for the test set; lower train_renderings")

    splits: dict[str, list[dict]] = {"train": train, **{name: [] for name in TEST_SPLITS}}
    for split, p, prompt, kind, pairs in tests:
        for winner, loser in pairs:
            for _ in range(cfg.test_renderings):
                chosen, rejected = fresh(winner), fresh(loser)
                splits[split].append(row(p, prompt, kind, winner, loser, chosen, rejected))
    return splits


def generate_cyclic(cfg: CyclicConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, reworded test rows): the two most callers want (cyclic_splits has every split)."""
    splits = cyclic_splits(cfg)
    return splits["train"], splits["reworded"]


def cyclic_split(cfg: CyclicConfig, split: str) -> list[dict]:
    """The rows of one split (train, a TEST_SPLITS name or an alias); ConfigError for an unknown or empty one."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in ("train", *TEST_SPLITS):
        raise ConfigError(f"cyclic: no split {split!r} (known: train, {', '.join(TEST_SPLITS)}; test is reworded)")
    rows = cyclic_splits(cfg)[split]
    if not rows:
        raise ConfigError(f"cyclic: the {split} split needs {_SPLIT_OPTION[split]} >= 1 (as the training data has it)")
    return rows


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Write rows as JSON lines through gpmctl.utils.atomic_write_text: readers never see half a file."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_cyclic(out_dir: str | Path, cfg: CyclicConfig) -> dict[str, Path]:
    """Write out_dir/SPLIT.jsonl for train and every non-empty test split; returns {split: path}."""
    out = Path(out_dir)
    paths = {}
    for split, rows in cyclic_splits(cfg).items():
        if rows:
            paths[split] = out / f"{split}.jsonl"
            _write_jsonl_atomic(paths[split], rows)
    return paths


def best_scalar_accuracy(rows: list[dict]) -> float:
    """The best accuracy any scalar score of the items (a Bradley-Terry reward) reaches on `rows`.

    Items are the rows' `chosen_item` / `rejected_item` names. A scalar score is a linear order of the
    items; a row counts as right when its chosen item ranks strictly above its rejected item (ties
    never help, so strict orders are enough). The score sees the item only, not the prompt or the
    surface words. This is the "BT ceiling" to report next to trained accuracies; on 3-cycle rows it
    is at most 2/3.

    On rows where every cycle's comparisons are equally weighted (the reworded and new_items splits),
    the circle cut at some point is an optimal order. That is not true for arbitrary rows (weights
    from transitive triples, or a hand-picked subset of comparisons can make a non-cut order better),
    so this is solved exactly: the items split into connected components of the comparison graph,
    and each component's best order is found by dynamic programming over subsets (2**size states).
    """
    if not rows:
        raise ValueError("best_scalar_accuracy: no rows")
    index: dict[str, int] = {}
    for r in rows:
        for key in ("chosen_item", "rejected_item"):
            index.setdefault(r[key], len(index))
    wins = np.zeros((len(index), len(index)))  # wins[u, v] = rows whose chosen item is u and rejected item is v
    for r in rows:
        wins[index[r["chosen_item"]], index[r["rejected_item"]]] += 1
    return sum(_best_order_agreement(wins[np.ix_(c, c)]) for c in _components(wins)) / len(rows)


def lookup_accuracy(train: list[dict], rows: list[dict]) -> float:
    """Accuracy on `rows` of a lookup table of training labels: the item that won a pair of items more
    often in `train` wins it again; a pair never compared in training (or tied) is a coin flip, worth 1/2."""
    wins = Counter((r["chosen_item"], r["rejected_item"]) for r in train)
    total = 0.0
    for r in rows:
        right, wrong = wins[(r["chosen_item"], r["rejected_item"])], wins[(r["rejected_item"], r["chosen_item"])]
        total += 1.0 if right > wrong else 0.0 if right < wrong else 0.5
    return total / len(rows)


def _components(wins: np.ndarray) -> list[list[int]]:
    """Connected components (lists of item indices) of the undirected graph of compared pairs."""
    linked = (wins + wins.T) > 0
    seen: set[int] = set()
    groups = []
    for start in range(len(wins)):
        if start in seen:
            continue
        group, stack = [], [start]
        seen.add(start)
        while stack:
            u = stack.pop()
            group.append(u)
            for v in np.flatnonzero(linked[u]):
                if int(v) not in seen:
                    seen.add(int(v))
                    stack.append(int(v))
        groups.append(sorted(group))
    return groups


def _best_order_agreement(wins: np.ndarray, chunk: int = 1 << 18) -> float:
    """Max over linear orders of the weight of rows ranked right; wins [n, n], n <= 24.

    best[S] = the most weight an order of the item set S (placed above all other items) gets right
    among rows inside S. Adding v at the bottom of S - {v} gets right the rows won by S - {v} over v:
        best[S] = max_{v in S} best[S - {v}] + sum_{u in S} wins[u, v]      (wins[v, v] = 0)
    Sets are processed by size, vectorised over all sets of one size.
    """
    n = len(wins)
    if n == 1:
        return 0.0
    if n > MAX_EXACT_ITEMS:
        raise ValueError(f"best_scalar_accuracy: {n} linked items is too many for the exact search")
    sets = np.arange(1 << n, dtype=np.int64)
    sizes = np.zeros(1 << n, dtype=np.int8)
    for bit in range(n):
        sizes += ((sets >> bit) & 1).astype(np.int8)
    order = np.argsort(sizes, kind="stable")
    bounds = np.searchsorted(sizes[order], np.arange(n + 2))
    best = np.zeros(1 << n)
    bits = np.arange(n, dtype=np.int64)
    for size in range(1, n + 1):
        layer = order[bounds[size] : bounds[size + 1]]
        for lo in range(0, len(layer), chunk):
            s = layer[lo : lo + chunk]
            member = ((s[:, None] >> bits) & 1).astype(bool)  # [m, n]
            gain = member.astype(np.float64) @ wins  # [m, n]: gain[s, v] = sum_{u in S} wins[u, v]
            cand = np.where(member, best[s[:, None] ^ (1 << bits)] + gain, -np.inf)
            best[s] = cand.max(axis=1)
    return float(best[-1])
