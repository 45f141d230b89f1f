"""The cyclic (intransitive) data generator and its Bradley-Terry ceiling."""

from __future__ import annotations

import json
import math
import random
from itertools import permutations

import pytest

from gpmctl.data.cyclic import (
    ITEM_WORDS,
    CyclicConfig,
    best_scalar_accuracy,
    generate_cyclic,
    item_angle,
    write_cyclic,
)
from gpmctl.errors import ConfigError

SMALL = CyclicConfig(num_prompts=40)


def _index(word: str) -> int:
    return ITEM_WORDS.index(word)


def _exhaustive_best(rows: list[dict], num_items: int) -> float:
    """Reference: try every ranking of the items (num_items <= 7)."""
    pairs = [(_index(r["chosen_item"]), _index(r["rejected_item"])) for r in rows]
    best = 0
    for order in permutations(range(num_items)):
        rank = {item: pos for pos, item in enumerate(order)}  # pos 0 = best
        best = max(best, sum(rank[w] < rank[l] for w, l in pairs))
    return best / len(rows)


def _best_cut(rows: list[dict], num_items: int) -> float:
    """Reference for the circle cut at every point, both directions."""
    pairs = [(_index(r["chosen_item"]), _index(r["rejected_item"])) for r in rows]
    best = 0
    for cut in range(num_items):
        for direction in (1, -1):
            rank = {(cut + direction * k) % num_items: k for k in range(num_items)}
            best = max(best, sum(rank[w] < rank[l] for w, l in pairs))
    return best / len(rows)


def test_same_seed_gives_same_rows_and_other_seed_differs():
    assert generate_cyclic(SMALL) == generate_cyclic(SMALL)
    assert generate_cyclic(SMALL) != generate_cyclic(CyclicConfig(num_prompts=40, seed=1))


def test_write_cyclic_is_byte_identical_valid_jsonl(tmp_path):
    paths = write_cyclic(tmp_path / "a", SMALL)
    again = write_cyclic(tmp_path / "b", SMALL)
    train, test = generate_cyclic(SMALL)
    for split, rows in (("train", train), ("test", test)):
        assert paths[split].read_bytes() == again[split].read_bytes()
        lines = paths[split].read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["test.jsonl", "train.jsonl"]  # no temp files left


def test_rows_have_the_documented_fields_and_unique_ids():
    train, test = generate_cyclic(SMALL)
    keys = {"id", "prompt", "chosen", "rejected", "kind", "cycle", "chosen_item", "rejected_item"}
    assert all(set(r) == keys for r in train + test)
    assert len({r["id"] for r in train + test}) == len(train) + len(test)
    assert {r["kind"] for r in train} == {"cycle", "transitive"}
    assert {r["kind"] for r in test} == {"cycle"}
    assert all(r["chosen_item"] in r["chosen"].split(" ") and r["rejected_item"] in r["rejected"].split(" ") for r in train)


@pytest.mark.parametrize(
    "cfg", [CyclicConfig(num_prompts=30), CyclicConfig(num_prompts=30, num_items=24, cycle_lengths=(3, 4, 6, 8))]
)
def test_chosen_item_beats_rejected_item_by_the_angle_rule(cfg):
    train, test = generate_cyclic(cfg)
    for r in train + test:
        gap = item_angle(_index(r["rejected_item"]), cfg.num_items) - item_angle(_index(r["chosen_item"]), cfg.num_items)
        assert math.sin(gap) > 1e-9  # never a tie, always the winner first


def test_test_prompts_never_appear_in_train():
    train, test = generate_cyclic(CyclicConfig(num_prompts=100))
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}


def test_word_style_answers_with_the_item_word():
    train, test = generate_cyclic(CyclicConfig(num_prompts=20))
    assert all(r["chosen"] == r["chosen_item"] and r["rejected"] == r["rejected_item"] for r in train + test)


def test_test_texts_never_appear_in_train():
    train, test = generate_cyclic(CyclicConfig(num_prompts=100, train_renderings=8, style="sentence"))
    train_texts = {t for r in train for t in (r["chosen"], r["rejected"])}
    assert not train_texts & {t for r in test for t in (r["chosen"], r["rejected"])}


def test_every_test_comparison_is_a_comparison_of_its_train_cycle():
    train, test = generate_cyclic(SMALL)
    train_keys = {(r["cycle"], r["chosen_item"], r["rejected_item"]) for r in train if r["kind"] == "cycle"}
    test_keys = {(r["cycle"], r["chosen_item"], r["rejected_item"]) for r in test}
    assert test_keys == train_keys
    assert len(test) == len(train_keys) * SMALL.test_renderings


def test_three_cycles_are_cycles():
    train, _ = generate_cyclic(SMALL)
    for p in range(SMALL.num_prompts):
        links = {(r["chosen_item"], r["rejected_item"]) for r in train if r["cycle"] == p and r["kind"] == "cycle"}
        assert len(links) == 3
        a, b = next(iter(links))
        c = next(w for w, l in links if l == a)  # who beats a
        assert {(a, b), (b, c), (c, a)} == links


def test_transitive_triples_are_consistent_neighbours():
    train, _ = generate_cyclic(SMALL)
    for p in range(SMALL.num_prompts):
        rows = [r for r in train if r["cycle"] == p and r["kind"] == "transitive"]
        triple = {(_index(r["chosen_item"]), _index(r["rejected_item"])) for r in rows}
        if triple:
            top = next(w for w, _ in triple if all(l != w for _, l in triple))
            n = SMALL.num_items
            assert triple == {(top, (top + 1) % n), ((top + 1) % n, (top + 2) % n), (top, (top + 2) % n)}


@pytest.mark.parametrize("num_items,lengths", [(6, (3,)), (6, (3, 6)), (4, (4,)), (5, (5,))])
def test_best_scalar_accuracy_matches_exhaustive_search(num_items, lengths):
    frac = 0.5 if num_items >= 5 else 0.0
    cfg = CyclicConfig(num_prompts=20, num_items=num_items, cycle_lengths=lengths, transitive_fraction=frac, seed=3)
    train, test = generate_cyclic(cfg)
    for rows in (train, test):
        assert best_scalar_accuracy(rows, num_items) == pytest.approx(_exhaustive_best(rows, num_items))
    # equally weighted cycles (every test set): the circle cut somewhere is an optimal order
    assert best_scalar_accuracy(test, num_items) == pytest.approx(_best_cut(test, num_items))


def test_best_scalar_accuracy_is_exact_on_random_subsets_where_a_cut_is_not_enough():
    rng = random.Random(0)
    train, _ = generate_cyclic(CyclicConfig(num_prompts=30, num_items=7, cycle_lengths=(7,), seed=5))
    for _ in range(15):
        rows = rng.sample(train, rng.randint(1, 25))
        assert best_scalar_accuracy(rows, 7) == pytest.approx(_exhaustive_best(rows, 7))
    # 1 > 3 > 0 > 2 > 4 satisfies these four rows, while every cut of the circle breaks one
    rows = [{"chosen_item": ITEM_WORDS[w], "rejected_item": ITEM_WORDS[l]} for w, l in [(0, 2), (2, 4), (1, 3), (3, 0)]]
    assert best_scalar_accuracy(rows, 5) == 1.0
    assert _best_cut(rows, 5) == 0.75


def test_bradley_terry_is_capped_at_two_thirds_on_three_cycles():
    _, test = generate_cyclic(CyclicConfig())
    assert best_scalar_accuracy(test, 12) <= 2 / 3 + 1e-9


@pytest.mark.parametrize(
    "change",
    [
        {"cycle_lengths": (5,)},  # does not divide 12
        {"cycle_lengths": (2,)},
        {"cycle_lengths": ()},
        {"transitive_fraction": 1.5},
        {"transitive_fraction": -0.1},
        {"num_prompts": 0},
        {"train_renderings": 0},
        {"test_renderings": 0},
        {"num_items": 0},
        {"num_items": len(ITEM_WORDS) + 1, "cycle_lengths": (len(ITEM_WORDS) + 1,)},
        {"num_items": 4, "cycle_lengths": (4,)},  # transitive triples impossible on 4 items
    ],
)
def test_bad_options_raise_config_error(change):
    with pytest.raises(ConfigError):
        generate_cyclic(CyclicConfig(**change))
