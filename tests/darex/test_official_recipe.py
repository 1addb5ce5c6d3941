"""The `paper` preset's official recipe (issue 13): the linear q sweep, the label-free objective on the encoder's
last hidden state over random windows and several masks, and η of the analytical q chosen on labelled data."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.runtime import generator
from darex import config, reproduce
from darex.checks import check_search_settings
from darex.data import random_windows
from darex.method import (
    InputStats,
    analytical_layer_q,
    coarse_to_fine_q,
    dare,
    global_q_search,
    last_hidden_states,
    linear_search,
    trimmed_mean,
)
from darex.models import load_tokenizer
from darex.regimes import (
    ANALYTICAL_LABELLED,
    METHODS,
    SEARCH_MASK,
    mask_id,
    search_mask_ids,
    text_methods,
)


def official_sweep(objective, low, high, step, decay=0.1, upper=1.0):
    """The two-stage sweep as the notes (§1.4) describe the official ``find_optimal_param``, with numpy's arange
    and float keys, written independently of :func:`darex.method.linear_search` (plus the q <= ``upper`` bound)."""
    scores = {}

    def stage(points):
        best, misses = -np.inf, 0
        for x in points:
            if x > upper + 1e-12:
                break
            key = round(float(x), 10)
            score = scores.setdefault(key, objective(key))
            if score >= best:
                best, misses = score, 0
            else:
                misses += 1
            if misses > 3:
                break

    stage(np.arange(low, high + step, step))
    best = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[0][0]
    stage(np.arange(max(low + step * decay, best - step * (1 - decay)), best + step, step * decay))
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[0][0], scores


OBJECTIVES = {
    "peak at q=0.23": lambda q: -abs(q - 0.23),
    "flat (ties everywhere)": lambda q: 1.0,
    "increasing to q=1": lambda q: q,
    "two bumps": lambda q: math.cos(12 * q) + 0.3 * q,
    "plateau then drop": lambda q: min(q, 0.4) - 2 * max(0.0, q - 0.6),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("p, high, step", [(0.99, 1.0, 0.05), (0.99, 0.1, 0.05), (0.5, 1.0, 0.05), (0.9, 1.0, 0.1)])
def test_linear_search_is_the_official_sweep(name, p, high, step):
    objective = OBJECTIVES[name]
    ours, seen = global_q_search(objective, p, search="linear", step=step, high=high, decay=0.1, patience=4)
    theirs, their_seen = official_sweep(objective, round(1 - p, 10), high, step)
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert sorted(seen) == pytest.approx(sorted(their_seen), abs=1e-9), "the same points are evaluated"
    assert all(1 - p - 1e-12 <= q <= 1.0 + 1e-12 for q in seen), "q stays in [1 - p, 1]"


def test_linear_search_steps_and_ties():
    evaluated = []
    q, scores = linear_search(lambda q: evaluated.append(q) or -abs(q - 0.23), 0.01, 1.0, 0.05)
    assert evaluated[:8] == [0.01, 0.06, 0.11, 0.16, 0.21, 0.26, 0.31, 0.36]
    assert evaluated[8] == 0.41 and 0.46 not in evaluated, "the coarse stage stops after 4 misses in a row"
    fine = evaluated[9:]
    assert fine[0] == pytest.approx(0.21 - 0.045) and all(round((x - 0.165) / 0.005, 6).is_integer() for x in fine)
    assert len(set(evaluated)) == len(evaluated), "a point of the coarse stage is not evaluated again"
    assert q == pytest.approx(0.23)
    # A flat objective: ties count as improvements (every point is tried), the first value wins; q stays <= 1.
    q, scores = linear_search(lambda q: 0.0, 0.01, 1.0, 0.05, upper=1.0)
    assert q == 0.01 and len(scores) == 20 + 9 and max(scores) == 0.96
    with pytest.raises(ValueError, match="step > 0"):
        linear_search(lambda q: 0.0, 0.01, 1.0, 0.0)


def test_global_q_search_log_is_the_old_search():
    objective = OBJECTIVES["two bumps"]
    assert global_q_search(objective, 0.9, search="log", coarse=6, fine=2, patience=4) == coarse_to_fine_q(
        objective, 0.9, 6, 2, 4
    )
    with pytest.raises(ValueError, match="search must be"):
        global_q_search(objective, 0.9, search="cubic")


def test_trimmed_mean_drops_the_value_farthest_from_the_mean():
    assert trimmed_mean([1.0, 2.0, 3.0, 10.0]) == 2.0
    assert trimmed_mean([1.0, 2.0]) == 1.5 and trimmed_mean([5.0]) == 5.0
    assert trimmed_mean([0.0, 1.0, 1.0, 1.0]) == 1.0
    with pytest.raises(ValueError):
        trimmed_mean([])


def test_random_windows_are_slices_of_the_joined_text_at_seeded_places():
    tokenizer = load_tokenizer(config.TINY_BERT)
    texts = [f"sentence number {i} is about a film" for i in range(30)]
    windows = random_windows(tokenizer, texts, window=16, n_windows=5, seed=0)
    ids = tokenizer(" ".join(texts))["input_ids"]
    rng = random.Random(0)
    starts = [rng.randint(0, len(ids) - 16 - 1) for _ in range(5)]
    assert windows.tolist() == [ids[s : s + 16] for s in starts]
    assert torch.equal(windows, random_windows(tokenizer, texts, window=16, n_windows=5, seed=0))
    with pytest.raises(ValueError, match=r"text\.unlabelled_window"):
        random_windows(tokenizer, texts[:1], window=64, n_windows=2)


def test_last_hidden_states_bert_and_roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from darex.models import load_classifier

    ids = torch.randint(5, 100, (3, 12), generator=generator(0))
    bert = load_classifier(config.TINY_BERT, 2, vocab_size=120)
    expected = bert.bert(input_ids=ids).last_hidden_state.reshape(-1, 32)
    torch.testing.assert_close(last_hidden_states(bert, ids, batch_size=2), expected)
    torch.manual_seed(0)
    small = RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64, num_labels=2)  # fmt: skip
    roberta = RobertaForSequenceClassification(small).eval()
    with torch.no_grad():
        expected = roberta.classifier.dense(roberta.roberta(input_ids=ids).last_hidden_state).reshape(-1, 32)
    torch.testing.assert_close(last_hidden_states(roberta, ids), expected)


def test_presets_paper_uses_the_official_recipe_smoke_and_mini_keep_theirs():
    paper = config.paper()
    assert paper.text.unlabelled_objective == "last_hidden"
    assert (paper.text.unlabelled_windows, paper.text.unlabelled_window) == (50, 128)
    assert (paper.prune.q_search, paper.prune.q_step, paper.prune.fine_decay, paper.prune.patience) == (
        "linear",
        0.05,
        0.1,
        4,
    )
    assert paper.prune.objective_masks == 4 and paper.prune.eta_search == "linear"
    assert paper.prune.analytical_eta[0] == "labelled" and "output_change" in paper.prune.analytical_eta
    for preset in (config.smoke(), config.mini()):
        assert preset.text.unlabelled_objective == "head_input" and preset.prune.q_search == "log"
        assert preset.prune.objective_masks == 1 and preset.prune.analytical_eta == ("output_change",)
        assert preset.prune.eta_search == "grid"
        assert text_methods(preset.prune) == METHODS, "smoke and mini keep their table"
    methods = list(text_methods(paper.prune))
    assert methods.index(ANALYTICAL_LABELLED) == methods.index("darex_q_analytical") - 1


def test_bad_search_settings_are_user_errors():
    cfg = config.smoke()
    check_search_settings(cfg)
    for bad in ({"analytical_eta": ("by_magic",)}, {"objective_masks": 0}, {"q_step": 0.0}, {"q_high": 1.5},
                {"fine_decay": 0.0}):  # fmt: skip
        with pytest.raises(ConfigError):
            check_search_settings(replace(cfg, prune=replace(cfg.prune, **bad)))


def test_search_masks_are_never_scored_masks():
    ids = search_mask_ids(3, 4)
    assert ids[0] == mask_id(3, SEARCH_MASK) and len(set(ids)) == 4
    scored = {mask_id(s, m) for s in range(1000) for m in range(SEARCH_MASK)}
    assert not scored & set(ids) and search_mask_ids(0, 1) == [SEARCH_MASK]


class StubBench:
    """What :func:`reproduce.prune_at_rate` needs of a bench: deltas, calibration means, and two objectives
    (functions of the pruned deltas) that record which mask each call used."""

    name = "stub"

    def __init__(self):
        g = generator(0)
        self.deltas = {"l.weight": 0.01 * torch.randn(12, 8, generator=g),
                       "l.bias": 0.01 * torch.randn(12, generator=g)}  # fmt: skip
        mean = torch.rand(8, generator=g)
        self.stats = {"l.weight": InputStats(mean=mean, sq_norm=mean**2, count=1)}
        self.target = {n: 0.7 * d for n, d in self.deltas.items()}  # the "best" pruned delta: 1/q ≈ 0.7/(1-p)
        self.calls: list[tuple[str, frozenset]] = []

    def _distance(self, pruned) -> float:
        return sum((pruned[n] - self.target[n]).abs().sum().item() for n in pruned)

    def score(self, pruned, split="test") -> float:
        self.calls.append((split, _mask_of(pruned)))
        return -self._distance(pruned)

    def change(self, pruned) -> float:
        self.calls.append(("change", _mask_of(pruned)))
        return self._distance(pruned)


def _mask_of(pruned) -> frozenset:
    return frozenset(int(i) for i in torch.cat([t.flatten() for t in pruned.values()]).nonzero().flatten())


def _masks(bench, seeds, p):
    return {s: _mask_of(dare(bench.deltas, p, 1.0, generator(s))) for s in seeds}


def test_prune_at_rate_uses_one_search_mask_for_labels_and_several_without():
    p, bench = 0.5, StubBench()
    cfg = config.smoke()
    cfg = replace(cfg, prune=replace(cfg.prune, q_search="linear", objective_masks=3, etas=(0.2, 0.6, 1.0)))
    search = search_mask_ids(0, 4)
    masks = _masks(bench, search, p)
    by_mask = {m: s for s, m in masks.items()}
    result = reproduce.prune_at_rate(bench, p, cfg, [0, 1], ("dare", "darex_q_labelled"), search)
    assert {by_mask.get(m) for split, m in bench.calls if split == "val"} == {search[0]}
    bench.calls.clear()
    result = reproduce.prune_at_rate(bench, p, cfg, [0, 1], ("dare", "darex_q_unlabelled"), search)
    assert {by_mask.get(m) for split, m in bench.calls if split == "change"} == set(search[:3])
    inv_q = result.inv_q["darex_q_unlabelled"]
    assert 1.0 <= inv_q <= 2.0 + 1e-9 and round((1 / inv_q - 0.5) / 0.005, 6).is_integer(), "on the linear grid"


def test_prune_at_rate_chooses_eta_on_labels_and_by_output_change():
    p, bench = 0.9, StubBench()
    cfg = config.smoke()
    etas = (0.2, 0.6, 1.0)
    cfg = replace(cfg, prune=replace(cfg.prune, analytical_eta=("labelled", "output_change"), etas=etas))
    search = search_mask_ids(0, 1)
    methods = ("dare", ANALYTICAL_LABELLED, "darex_q_analytical")
    result = reproduce.prune_at_rate(bench, p, cfg, [0, 1], methods, search)
    means = {"l.weight": bench.stats["l.weight"].mean}

    def val(eta):
        q = analytical_layer_q(bench.deltas, means, p, eta)
        return -bench._distance(dare(bench.deltas, p, q, generator(search[0])))

    assert result.eta[ANALYTICAL_LABELLED] == max(etas, key=val)
    assert set(result.eta) == {ANALYTICAL_LABELLED, "darex_q_analytical"}
    assert set(result.scores) == {"dare", ANALYTICAL_LABELLED, "darex_q_analytical"}
    assert all(len(v) == 2 for v in result.scores.values())
    # The official linear η sweep from min(etas) to max(etas) in steps of eta_step (fine: fine_decay x it).
    cfg = replace(cfg, prune=replace(cfg.prune, eta_search="linear", eta_step=0.2))
    result = reproduce.prune_at_rate(bench, p, cfg, [0], methods, search)
    for eta in result.eta.values():
        assert 0.2 - 1e-9 <= eta <= 1.2 and round(eta / 0.02, 6).is_integer()
