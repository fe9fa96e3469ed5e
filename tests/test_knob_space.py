"""KnobSpace: the 225 configurations, their stable indices, block plans and action encodings."""

import itertools

import numpy as np
import pytest

from envs.knob_space import DEFAULT_IMPORTANCE_SCORES, KnobConfig, KnobSpace

KS = KnobSpace()
VALID_PAIRS = {1: range(12, 17), 2: range(13, 17), 3: range(14, 17), 4: range(15, 17), 5: range(16, 17)}


def test_enumerates_225_valid_configs_in_stable_order():
    assert len(KS) == 225
    expected = [
        KnobConfig(t, p, k, b)
        for t in ("low", "medium", "high")
        for p in range(1, 6)
        for k in range(4, 9)
        for b in VALID_PAIRS[p]
    ]
    assert list(KS.configs) == expected
    for i, c in enumerate(KS.configs):
        assert KS.index(c) == i and KS.config(i) == c
        assert KS.index(c.as_dict()) == i and KS.index((c.tier, c.p, c.top_k, c.blocks)) == i


def test_rejects_invalid_configs_and_indices():
    with pytest.raises(ValueError, match="not a valid configuration"):
        KS.index(KnobConfig("high", 2, 8, 12))
    with pytest.raises(ValueError, match="out of range"):
        KS.config(225)
    with pytest.raises(ValueError, match="not a valid configuration"):
        KS.plan(KnobConfig("high", 5, 8, 15))


def test_default_scores_give_measured_removal_order():
    # dropping 1..4 blocks at p=1 removes 4, 13, 10, 2 in that order
    removed = []
    for b in (15, 14, 13, 12):
        plan = KS.plan(KnobConfig("high", 1, 8, b))
        removed.append(plan.skipped)
    assert removed == [(4,), (4, 13), (4, 10, 13), (2, 4, 10, 13)]
    assert np.argsort(DEFAULT_IMPORTANCE_SCORES)[:4].tolist() == [4, 13, 10, 2]


@pytest.mark.parametrize("idx", range(225))
def test_every_block_plan(idx):
    c = KS.config(idx)
    plan = KS.plan(c)
    ks = plan.top_k_per_block
    assert len(ks) == 16
    assert all(ks[b] == 8 for b in range(c.p)), "blocks before p run in full"
    tail = [ks[b] for b in range(c.p, 16)]
    assert sum(k > 0 for k in tail) == c.blocks - c.p
    assert all(k in (0, c.top_k) for k in tail)
    assert len(plan.active) == c.blocks
    assert plan.expert_slots == 8 * c.p + c.top_k * (c.blocks - c.p)
    # kept tail blocks are the highest-scored ones
    s = np.asarray(DEFAULT_IMPORTANCE_SCORES)
    kept = [b for b in range(c.p, 16) if ks[b] > 0]
    dropped = [b for b in range(c.p, 16) if ks[b] == 0]
    if dropped:
        assert s[kept].min() >= s[dropped].max()


def test_plan_with_custom_scores_and_ties():
    scores = np.zeros(16)
    plan = KS.plan(KnobConfig("low", 1, 4, 12), scores)
    assert plan.skipped == (12, 13, 14, 15), "ties keep the earlier blocks"
    scores = np.arange(16, dtype=float)  # later = more important
    assert KS.plan(KnobConfig("low", 2, 5, 13), scores).skipped == (2, 3, 4)
    with pytest.raises(ValueError, match="shape"):
        KS.plan(0, np.zeros(3))


def test_multidiscrete_roundtrip_and_errors():
    assert KS.multidiscrete_nvec == (3, 5, 5, 5)
    seen = set()
    for a in itertools.product(range(3), range(5), range(5), range(5)):
        p = a[1] + 1
        if a[3] > 5 - p:
            with pytest.raises(ValueError, match="active-blocks index"):
                KS.from_multidiscrete(a)
            continue
        c = KS.from_multidiscrete(a)
        assert c.blocks == p + 11 + a[3] and c.top_k == 4 + a[2]
        assert KS.to_multidiscrete(c).tolist() == list(a)
        seen.add(c)
    assert len(seen) == 225
    with pytest.raises(ValueError, match="outside"):
        KS.from_multidiscrete([3, 0, 0, 0])


def test_serialisation_roundtrip_and_table():
    ks2 = KnobSpace.from_json(KS.to_json())
    assert ks2 == KS and ks2.same_configs(KS)
    t = KS.config_table()
    assert set(t) >= {"tier", "p", "top_k", "blocks", "crops", "expert_slots", "blocks_index"}
    assert all(v.shape == (225,) for v in t.values())
    assert t["crops"][KS.index(KS.full_config)] == 12
    assert KS.full_config == KnobConfig("high", 1, 8, 16)
    assert KS.cheapest_config == KnobConfig("low", 1, 4, 12)
    with pytest.raises(ValueError, match="unknown KnobSpace fields"):
        KnobSpace.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="importance_scores"):
        KnobSpace(importance_scores=(1.0,) * 3)


def test_custom_space_sizes():
    small = KnobSpace(tiers=("low", "high"), crops=(2, 8), insertion_positions=(1, 2), top_ks=(2, 4))
    # p=1: 12..16 (5), p=2: 13..16 (4) -> 9 pairs * 2 tiers * 2 k
    assert len(small) == 36
