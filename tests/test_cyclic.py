"""The cyclic (intransitive) data generator and its Bradley-Terry ceiling."""

from __future__ import annotations

import json
import math
import random
from itertools import permutations, product
from pathlib import Path

import numpy as np
import pytest

from gpmctl.data.cyclic import (
    HELD_OUT_EDGES,
    ITEM_WORDS,
    TEST_SPLITS,
    CyclicConfig,
    best_scalar_accuracy,
    cyclic_splits,
    generate_cyclic,
    item_angle,
    lookup_accuracy,
    write_cyclic,
)
from gpmctl.errors import ConfigError
from tests.shell import assert_one_line_error, run, snapshot

SMALL = CyclicConfig(num_prompts=40)
HARD = CyclicConfig(num_prompts=40, blend_prompts=30, tournament_prompts=3)  # every split


def _index(word: str) -> int:
    return ITEM_WORDS.index(word)


def _exhaustive_best(rows: list[dict]) -> float:
    """Reference: try every ranking of the items the rows name (at most 7 of them)."""
    pairs = [(r["chosen_item"], r["rejected_item"]) for r in rows]
    best = 0
    for order in permutations({item for pair in pairs for item in pair}):
        rank = {item: pos for pos, item in enumerate(order)}  # pos 0 = best
        best = max(best, sum(rank[w] < rank[lo] for w, lo in pairs))
    return best / len(rows)


def _best_cut(rows: list[dict], num_items: int) -> float:
    """Reference for the circle cut at every point, both directions."""
    pairs = [(_index(r["chosen_item"]), _index(r["rejected_item"])) for r in rows]
    best = 0
    for cut in range(num_items):
        for direction in (1, -1):
            rank = {(cut + direction * k) % num_items: k for k in range(num_items)}
            best = max(best, sum(rank[w] < rank[lo] for w, lo in pairs))
    return best / len(rows)


def test_same_seed_gives_same_rows_and_other_seed_differs():
    assert generate_cyclic(SMALL) == generate_cyclic(SMALL)
    assert generate_cyclic(SMALL) != generate_cyclic(CyclicConfig(num_prompts=40, seed=1))


@pytest.mark.parametrize("cfg", [SMALL, HARD])
def test_write_cyclic_is_byte_identical_valid_jsonl(tmp_path, cfg):
    paths = write_cyclic(tmp_path / "a", cfg)
    again = write_cyclic(tmp_path / "b", cfg)
    splits = {name: rows for name, rows in cyclic_splits(cfg).items() if rows}
    assert set(paths) == set(splits) == ({"train", "reworded"} if cfg is SMALL else {"train", *TEST_SPLITS})
    for split, rows in splits.items():
        assert paths[split].read_bytes() == again[split].read_bytes()
        lines = paths[split].read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(f"{s}.jsonl" for s in splits)  # no temp files left


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
        c = next(w for w, lo in links if lo == a)  # who beats a
        assert {(a, b), (b, c), (c, a)} == links


def test_transitive_triples_are_consistent_neighbours():
    train, _ = generate_cyclic(SMALL)
    for p in range(SMALL.num_prompts):
        rows = [r for r in train if r["cycle"] == p and r["kind"] == "transitive"]
        triple = {(_index(r["chosen_item"]), _index(r["rejected_item"])) for r in rows}
        if triple:
            top = next(w for w, _ in triple if all(lo != w for _, lo in triple))
            n = SMALL.num_items
            assert triple == {(top, (top + 1) % n), ((top + 1) % n, (top + 2) % n), (top, (top + 2) % n)}


@pytest.mark.parametrize("num_items,lengths", [(6, (3,)), (6, (3, 6)), (4, (4,)), (5, (5,))])
def test_best_scalar_accuracy_matches_exhaustive_search(num_items, lengths):
    frac = 0.5 if num_items >= 5 else 0.0
    cfg = CyclicConfig(num_prompts=20, num_items=num_items, cycle_lengths=lengths, transitive_fraction=frac, seed=3)
    train, test = generate_cyclic(cfg)
    for rows in (train, test):
        assert best_scalar_accuracy(rows) == pytest.approx(_exhaustive_best(rows))
    # equally weighted cycles (every test set): the circle cut somewhere is an optimal order
    assert best_scalar_accuracy(test) == pytest.approx(_best_cut(test, num_items))


def test_best_scalar_accuracy_is_exact_on_random_subsets_where_a_cut_is_not_enough():
    rng = random.Random(0)
    train, _ = generate_cyclic(CyclicConfig(num_prompts=30, num_items=7, cycle_lengths=(7,), seed=5))
    for _ in range(15):
        rows = rng.sample(train, rng.randint(1, 25))
        assert best_scalar_accuracy(rows) == pytest.approx(_exhaustive_best(rows))
    # 1 > 3 > 0 > 2 > 4 satisfies these four rows, while every cut of the circle breaks one
    rows = [{"chosen_item": ITEM_WORDS[w], "rejected_item": ITEM_WORDS[lo]} for w, lo in [(0, 2), (2, 4), (1, 3), (3, 0)]]
    assert best_scalar_accuracy(rows) == 1.0
    assert _best_cut(rows, 5) == 0.75


def test_bradley_terry_is_capped_at_two_thirds_on_three_cycles():
    _, test = generate_cyclic(CyclicConfig())
    assert best_scalar_accuracy(test) <= 2 / 3 + 1e-9


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
        {"blend_prompts": -1},
        {"tournament_prompts": -1},
        {"blend_prompts": 1, "num_items": 6, "cycle_lengths": (3,)},  # no trained blend at the new items' angles
        {"blend_prompts": 1, "num_items": 10, "cycle_lengths": (5,)},  # 3-cycles of half-steps need 3 | num_items
        {"tournament_prompts": 1, "num_items": 18, "cycle_lengths": (3,)},  # no 7 words left for the tournament
    ],
)
def test_bad_options_raise_config_error(change):
    with pytest.raises(ConfigError):
        generate_cyclic(CyclicConfig(**change))


# The harder test splits: new items (two-word blends) and held-out comparisons (the 7-item tournament)


def _blend_angle(item: str, num_items: int) -> float:
    """Reference angle of an item: a word's own, a blend's the direction of the sum of its words' unit vectors."""
    angles = [item_angle(_index(word), num_items) for word in item.split(" ")]
    return math.atan2(sum(map(math.sin, angles)), sum(map(math.cos, angles)))


def _items(rows: list[dict]) -> set[str]:
    return {r[key] for r in rows for key in ("chosen_item", "rejected_item")}


def _texts(rows: list[dict]) -> set[str]:
    return {r[key] for r in rows for key in ("chosen", "rejected")}


@pytest.mark.parametrize("style", ["word", "sentence"])
def test_new_items_never_appear_in_training_but_every_word_of_them_does(style):
    splits = cyclic_splits(CyclicConfig(num_prompts=40, blend_prompts=60, style=style))
    train, new = splits["train"], splits["new_items"]
    assert len(_items(new)) == 12  # all twelve adjacent blends are asked
    assert not _items(new) & _items(train)
    assert not _texts(new) & _texts(train)
    assert not {r["prompt"] for r in new} & {r["prompt"] for r in train}
    train_words = {word for text in _texts(train) for word in text.rstrip(".").split(" ")}
    assert all(set(item.split(" ")) <= train_words for item in _items(new))  # readable from trained words


@pytest.mark.parametrize("num_items", [9, 12, 24])
def test_blend_winners_follow_the_angle_halfway_between_their_words(num_items):
    cfg = CyclicConfig(num_prompts=5, num_items=num_items, blend_prompts=60)
    splits = cyclic_splits(cfg)
    blends = [r for r in splits["train"] if r["kind"] == "blend"] + splits["new_items"]
    for r in blends:
        gap = _blend_angle(r["rejected_item"], num_items) - _blend_angle(r["chosen_item"], num_items)
        assert math.sin(gap) > 1e-9
    for item in _items(splits["new_items"]):
        first, second = map(_index, item.split(" "))
        assert second == (first + 1) % num_items  # new items are adjacent blends only
    trained = _items([r for r in splits["train"] if r["kind"] == "blend"])
    assert any(" " in item for item in trained) and any(" " not in item for item in trained)  # words and blends mixed


def test_new_item_sets_are_three_cycles_no_scalar_reward_gets_right():
    new = cyclic_splits(HARD)["new_items"]
    for p in {r["cycle"] for r in new}:
        links = {(r["chosen_item"], r["rejected_item"]) for r in new if r["cycle"] == p}
        a, b = next(iter(links))
        c = next(w for w, lo in links if lo == a)
        assert {(a, b), (b, c), (c, a)} == links
    assert best_scalar_accuracy(new) == pytest.approx(2 / 3)


def test_the_tournament_is_regular_and_its_held_out_edges_are_never_trained():
    splits = cyclic_splits(HARD)
    words = ITEM_WORDS[HARD.num_items : HARD.num_items + 7]
    as_edges = lambda rows: {(words.index(r["chosen_item"]), words.index(r["rejected_item"])) for r in rows}  # noqa: E731
    trained = as_edges([r for r in splits["train"] if r["kind"] == "tournament"])
    held = as_edges(splits["new_edges"])
    assert held == set(HELD_OUT_EDGES) and len(trained) == 15
    edges = trained | held
    assert len({frozenset(e) for e in edges}) == len(edges) == 21  # every pair once: a tournament
    assert all(sum(w == k for w, _ in edges) == 3 for k in range(7))  # regular: each item beats three
    assert all((lo - w) % 7 in (1, 2, 3) for w, lo in edges)  # ... the next three around the circle
    compared = {frozenset((r["chosen_item"], r["rejected_item"])) for r in splits["train"]}
    assert not {frozenset((r["chosen_item"], r["rejected_item"])) for r in splits["new_edges"]} & compared
    assert not set(words) & set(ITEM_WORDS[: HARD.num_items])  # items of their own, off the main circle
    ceiling = best_scalar_accuracy(splits["new_edges"])
    assert ceiling == pytest.approx(_exhaustive_best(splits["new_edges"])) == pytest.approx(5 / 6)  # the 4-cycle


def _implied_on_one_circle(held: set[tuple[int, int]]) -> bool:
    """Whether every placement of the 7 tournament items on one circle that gets every other edge right
    gets the `held` edges right too. a beats b iff sin(theta_b - theta_a) > 0; with phi = theta mod pi and
    up = theta >= pi that is (phi_a < phi_b) != (up_a != up_b), so the orders of phi and the up flags
    enumerate every placement."""
    n = 7
    ranks = np.argsort(np.array(list(permutations(range(n)))), axis=1)[:, None, :]  # [orders, 1, n]: rank of each item
    ups = np.array(list(product((False, True), repeat=n)))[None, :, :]  # [1, flags, n]
    beats = lambda a, b: (ranks[..., a] < ranks[..., b]) != (ups[..., a] != ups[..., b])  # noqa: E731
    edges = [(w, lo) for w in range(n) for lo in range(n) if (lo - w) % n in (1, 2, 3)]
    consistent = np.logical_and.reduce([beats(w, lo) for w, lo in edges if (w, lo) not in held])
    assert consistent.any()  # the evenly spaced circle, at least
    return bool(np.logical_and.reduce([beats(w, lo) for w, lo in held])[consistent].all())


def test_held_out_edges_follow_from_the_trained_edges_on_one_circle():
    theta = np.random.default_rng(0).uniform(0, 2 * np.pi, (2000, 7))  # the phi / up rule is the sine rule
    phi, up = theta % np.pi, theta >= np.pi
    for a, b in permutations(range(7), 2):
        expected = np.sin(theta[:, b] - theta[:, a]) > 0
        assert np.array_equal(expected, (phi[:, a] < phi[:, b]) != (up[:, a] != up[:, b]))
    assert _implied_on_one_circle(set(HELD_OUT_EDGES))
    assert not _implied_on_one_circle({*HELD_OUT_EDGES, (0, 3)})  # holding out a three-step edge too breaks it


def test_a_lookup_table_of_training_labels_answers_reworded_but_is_at_chance_on_the_new_sets():
    splits = cyclic_splits(HARD)
    winners: dict[frozenset, set[str]] = {}  # pair of items -> the items that won it in training
    for r in splits["train"]:
        winners.setdefault(frozenset((r["chosen_item"], r["rejected_item"])), set()).add(r["chosen_item"])

    def lookup(rows):  # a pair never trained is a coin flip
        credit = {}
        for r in rows:
            won = winners.get(frozenset((r["chosen_item"], r["rejected_item"])), set())
            credit[r["id"]] = 1.0 if won == {r["chosen_item"]} else 0.0 if won == {r["rejected_item"]} else 0.5
        return sum(credit.values()) / len(rows)

    assert lookup(splits["reworded"]) == lookup_accuracy(splits["train"], splits["reworded"]) == 1.0
    for split in ("new_items", "new_edges"):
        assert lookup(splits[split]) == lookup_accuracy(splits["train"], splits[split]) == 0.5


def test_extra_prompts_leave_the_base_rows_and_the_reworded_split_as_they_were():
    base, hard = cyclic_splits(SMALL), cyclic_splits(HARD)  # word style: renderings draw nothing
    assert hard["reworded"] == base["reworded"]
    assert hard["train"][: len(base["train"])] == base["train"]
    assert {r["kind"] for r in hard["train"][len(base["train"]) :]} == {"blend", "tournament"}
    assert len({r["id"] for rows in hard.values() for r in rows}) == sum(map(len, hard.values()))


def test_cyclic_test_is_the_reworded_split_and_an_empty_split_names_its_option():
    from gpmctl.data.sources import source_rows

    assert source_rows("cyclic:test?num_prompts=10") == source_rows("cyclic:reworded?num_prompts=10")
    for split, option in (("new_items", "blend_prompts"), ("new_edges", "tournament_prompts")):
        with pytest.raises(ConfigError, match=option):
            source_rows(f"cyclic:{split}?num_prompts=10")
        assert source_rows(f"cyclic:{split}?num_prompts=10&{option}=2")


# `gpmctl demo`'s table and `gpmctl data cyclic` / `gpmctl eval cyclic` on the new splits

DEMO_OPTIONS = "num_prompts=12&blend_prompts=6&tournament_prompts=2"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, str]:
    """A GPM and a BT model after two steps on small cyclic data: the wiring is under test, not the models."""
    from gpmctl.config import load_recipe
    from gpmctl.train.reward import train_reward_model

    root = tmp_path_factory.mktemp("demo")
    runs = {}
    for kind in ("gpm", "bt"):
        recipe = load_recipe(
            f"recipes/cyclic_tiny_{kind}.yaml",
            [
                f"output_dir={root / kind}",
                f"data.train=cyclic:train?{DEMO_OPTIONS}",
                f"data.eval=cyclic:reworded?{DEMO_OPTIONS}",
                "train.max_steps=2",
                "model.tiny.hidden_size=32",
                "model.tiny.intermediate_size=64",
                "model.tiny.num_layers=1",
            ],
        )
        runs[kind] = str(train_reward_model(recipe).output_dir)
    return runs


def test_demo_table_scores_both_models_on_every_test_set_as_eval_cyclic_does(tiny_runs):
    from gpmctl.cli.demo import score_test_sets

    table = score_test_sets(tiny_runs, f"cyclic:train?{DEMO_OPTIONS}", 128)
    splits = cyclic_splits(CyclicConfig(num_prompts=12, blend_prompts=6, tournament_prompts=2))
    assert list(table) == list(TEST_SPLITS)
    for split, entry in table.items():
        assert entry["pairs"] == len(splits[split])
        assert entry["lookup"] == (1.0 if split == "reworded" else 0.5)
        for kind, folder in tiny_runs.items():
            result = run("eval", "cyclic", "-m", folder, "--data", f"cyclic:{split}?{DEMO_OPTIONS}")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert entry[kind] == pytest.approx(report["accuracy"])
            assert entry["bt_ceiling"] == pytest.approx(report["bt_ceiling"])
        assert entry["bt_ceiling"] == pytest.approx(best_scalar_accuracy(splits[split]))
    assert table["new_items"]["bt_ceiling"] == pytest.approx(2 / 3) and table["new_edges"]["bt_ceiling"] == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    "args,needles",
    [
        (["data", "cyclic", "{out}", "--blend-prompts", "-1"], ["blend_prompts", ">= 0"]),
        (
            ["data", "cyclic", "{out}", "--blend-prompts", "1", "--num-items", "10", "--cycle-lengths", "5"],
            ["blend_prompts", "num_items divisible by 3"],
        ),
        (["data", "cyclic", "{out}", "--tournament-prompts", "1", "--num-items", "18"], ["tournament_prompts", "num_items"]),
        (["data", "cyclic", "{out}", "--style", "prose"], ["style", "word or sentence", "'prose'"]),
        (["eval", "cyclic", "-m", "{gpm}", "--data", "cyclic:new_items?num_prompts=4"], ["new_items", "blend_prompts"]),
        (["eval", "cyclic", "-m", "{gpm}", "--data", "cyclic:new_edges?num_prompts=4"], ["new_edges", "tournament_prompts"]),
    ],
)
def test_bad_cyclic_options_are_one_line_errors_that_touch_nothing(tmp_path, tiny_runs, args, needles):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("earlier\n")
    before = snapshot(out, tiny_runs["gpm"])
    assert_one_line_error(run(*(a.format(out=out, gpm=tiny_runs["gpm"]) for a in args)), *needles)
    assert snapshot(out, tiny_runs["gpm"]) == before


def test_data_cyclic_writes_every_split_and_its_bt_ceiling(tmp_path):
    result = run("data", "cyclic", str(tmp_path), "--num-prompts", "12", "--blend-prompts", "6", "--tournament-prompts", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    splits = cyclic_splits(CyclicConfig(num_prompts=12, blend_prompts=6, tournament_prompts=2))
    for split, rows in splits.items():
        assert [json.loads(line) for line in Path(summary[split]).read_text().splitlines()] == rows
    assert {k: v for k, v in summary.items() if k.startswith("bt_ceiling")} == {
        "bt_ceiling_reworded": pytest.approx(2 / 3, abs=1e-4),
        "bt_ceiling_new_items": pytest.approx(2 / 3, abs=1e-4),
        "bt_ceiling_new_edges": pytest.approx(5 / 6, abs=1e-4),
    }


def test_data_cyclic_style_sentence_writes_the_sentence_rows_recipes_read(tmp_path):
    from gpmctl.data.sources import source_rows

    options = ["--num-prompts", "12", "--blend-prompts", "6", "--tournament-prompts", "2", "--style", "sentence"]
    result = run("data", "cyclic", str(tmp_path), *options)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    splits = cyclic_splits(CyclicConfig(num_prompts=12, blend_prompts=6, tournament_prompts=2, style="sentence"))
    query = "num_prompts=12&blend_prompts=6&tournament_prompts=2&style=sentence"  # what a recipe's data.train says
    for split, rows in splits.items():
        written = [json.loads(line) for line in Path(summary[split]).read_text().splitlines()]
        assert written == rows and source_rows(f"cyclic:{split}?{query}") == rows
        assert all(r["chosen"] != r["chosen_item"] and f" {r['chosen_item']} " in r["chosen"] for r in written)
    assert summary["bt_ceiling_new_items"] == pytest.approx(2 / 3, abs=1e-4)


@pytest.mark.parametrize("backbone", ["minilm", "smollm2"])
def test_pretrained_cyclic_recipes_give_every_head_the_same_features_and_every_test_split(backbone):
    """docs/cyclic_pretrained.py compares bt, gpm and gpm_bt on one cached feature file per backbone."""
    from gpmctl.config import load_recipe
    from gpmctl.data.sources import parse_cyclic_spec

    recipes = {kind: load_recipe(f"recipes/cyclic_{backbone}_{kind}.yaml") for kind in ("bt", "gpm", "gpm_bt")}
    assert {kind: r.model.kind for kind, r in recipes.items()} == {"bt": "bt", "gpm": "gpm", "gpm_bt": "gpm_bt"}
    reads = {(r.model.backbone, r.model.resolved_eos(), r.model.pool, r.data.train, r.data.max_length) for r in recipes.values()}
    assert len(reads) == 1 and all(r.model.freeze_backbone and not r.model.gate for r in recipes.values())
    assert {(r.train.lr, r.train.epochs) for r in recipes.values()} == {(recipes["gpm"].train.lr, recipes["gpm"].train.epochs)}
    split, cfg = parse_cyclic_spec(recipes["gpm"].data.train)
    assert split == "train" and cfg.style == "sentence" and cfg.blend_prompts > 0 and cfg.tournament_prompts > 0
