"""ModalityBalancedSampler: target probabilities, realised proportions, reproducibility, DataLoader workers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2
from torch.utils.data import DataLoader, Dataset

from medsamlite.data.samplers import ModalityBalancedSampler, ShuffleSampler, modality_probabilities

COUNTS = {"CT": 50, "MR": 30, "US": 10, "XRay": 6, "PET": 4}
MODALITIES = [m for m, n in COUNTS.items() for _ in range(n)]


def chi_square_ok(sampler: ModalityBalancedSampler, draws: np.ndarray, alpha: float = 1e-3) -> bool:
    """Pearson chi-square goodness of fit of the drawn modalities to the sampler's target probabilities."""
    names = list(sampler.probabilities)
    observed = np.array([sum(MODALITIES[i] == m for i in draws) for m in names], dtype=float)
    expected = np.array([sampler.probabilities[m] for m in names]) * len(draws)
    keep = expected > 0
    assert observed[~keep].sum() == 0, "drew a modality with probability 0"
    stat = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    return stat < chi2.ppf(1 - alpha, df=int(keep.sum()) - 1)


def test_explicit_probabilities_rest_share_remainder():
    p = modality_probabilities(COUNTS, {"CT": 0.4, "MR": 0.1})
    assert p["CT"] == pytest.approx(0.4) and p["MR"] == pytest.approx(0.1)
    for m in ("US", "XRay", "PET"):
        assert p[m] == pytest.approx(0.5 / 3)
    # with a temperature too, the rest share the remainder by n^(1/T)
    p = modality_probabilities(COUNTS, {"CT": 0.4}, temperature=1.0)
    assert p["MR"] == pytest.approx(0.6 * 30 / 50)


@pytest.mark.parametrize("temperature,expected", [
    (1.0, {m: n / 100 for m, n in COUNTS.items()}),
    (math.inf, {m: 0.2 for m in COUNTS}),
    (2.0, {m: math.sqrt(n) / sum(math.sqrt(k) for k in COUNTS.values()) for m, n in COUNTS.items()}),
])
def test_temperature_scaling(temperature, expected):
    p = modality_probabilities(COUNTS, temperature=temperature)
    assert p == pytest.approx(expected)


def test_bad_probabilities_are_named():
    with pytest.raises(ValueError, match="Fundus"):
        modality_probabilities(COUNTS, {"Fundus": 0.2})
    with pytest.raises(ValueError, match="> 1"):
        modality_probabilities(COUNTS, {"CT": 0.7, "MR": 0.6})
    with pytest.raises(ValueError, match="not 1"):
        modality_probabilities({"CT": 3, "MR": 1}, {"CT": 0.5, "MR": 0.2})
    with pytest.raises(ValueError, match="temperature"):
        modality_probabilities(COUNTS, temperature=0)


@pytest.mark.parametrize("kwargs", [dict(probabilities={"CT": 0.4, "MR": 0.1}), dict(temperature=2.0),
                                    dict(temperature=math.inf), dict()])
def test_drawn_proportions_pass_chi_square(kwargs):
    sampler = ModalityBalancedSampler(MODALITIES, num_samples=20000, seed=3, **kwargs)
    draws = np.array(list(sampler))
    assert len(draws) == 20000
    assert chi_square_ok(sampler, draws)
    realised = sampler.realised_proportions()
    for m, p in sampler.probabilities.items():
        assert realised[m] == pytest.approx(p, abs=0.015)
    assert "CT" in sampler.report()


def test_chi_square_detects_the_wrong_distribution():
    natural = ModalityBalancedSampler(MODALITIES, num_samples=20000, seed=0)
    balanced = ModalityBalancedSampler(MODALITIES, probabilities={"CT": 0.4, "MR": 0.1}, num_samples=20000)
    assert not chi_square_ok(balanced, np.array(list(natural)))


def test_items_within_a_modality_are_uniform():
    sampler = ModalityBalancedSampler(MODALITIES, probabilities={"CT": 0.4, "MR": 0.1}, num_samples=30000, seed=1)
    counts = np.bincount(list(sampler), minlength=len(MODALITIES))
    us = counts[80:90]  # the ten US items share 0.5 / 3
    expected = 30000 * 0.5 / 3 / 10
    assert float(((us - expected) ** 2 / expected).sum()) < chi2.ppf(0.999, df=9)


def test_reproducible_by_seed_and_new_draw_each_epoch():
    a = ModalityBalancedSampler(MODALITIES, temperature=2.0, seed=7)
    b = ModalityBalancedSampler(MODALITIES, temperature=2.0, seed=7)
    c = ModalityBalancedSampler(MODALITIES, temperature=2.0, seed=8)
    first_a, first_b, first_c = list(a), list(b), list(c)
    assert first_a == first_b and first_a != first_c
    second_a = list(a)  # the next iteration is the next epoch
    assert second_a != first_a
    b.set_epoch(1)
    assert list(b) == second_a
    b.set_epoch(0)
    assert list(b) == first_a


class IndexDataset(Dataset):
    def __len__(self) -> int:
        return len(MODALITIES)

    def __getitem__(self, i: int) -> int:
        return i


def test_same_indices_with_several_workers_and_counts_kept_in_main_process():
    sampler = ModalityBalancedSampler(MODALITIES, probabilities={"CT": 0.4, "MR": 0.1}, num_samples=96, seed=5)
    expected = sampler.indices(0).tolist() + sampler.indices(1).tolist()
    loader = DataLoader(IndexDataset(), batch_size=8, sampler=sampler, num_workers=2)
    got = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got += torch.cat(list(loader)).tolist()
    assert got == expected
    drawn = np.array(expected)
    for m, share in sampler.realised_proportions().items():
        assert share == pytest.approx(np.mean([MODALITIES[i] == m for i in drawn]))


@pytest.mark.parametrize("make", [lambda **kw: ModalityBalancedSampler(MODALITIES, temperature=2.0, num_samples=99,
                                                                       seed=4, **kw),
                                  lambda **kw: ShuffleSampler(99, seed=4, **kw)])
@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_and_make_up_the_single_process_stream(make, world):
    single = make()
    for epoch in (0, 1):
        stream = single.indices(epoch)
        shards = [make(rank=r, world_size=world).indices(epoch) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # every rank runs the same number of batches
        n = len(shards[0]) * world
        interleaved = np.stack(shards, axis=1).reshape(-1)  # position p of the stream went to rank p % world
        assert np.array_equal(interleaved, stream[:n]) and len(stream) - n < world
    assert list(make(rank=1, world_size=world)) == make(rank=1, world_size=world).indices(0).tolist()


def test_resumes_mid_epoch_from_its_state():
    sampler = ShuffleSampler(20, seed=2, rank=1, world_size=2)
    sampler.set_epoch(3)
    full = list(sampler)
    assert len(full) == 10 and sampler.state_dict() == {"seed": 2, "epoch": 4, "start": 0}
    sampler.set_epoch(3, start=4)
    assert len(sampler) == 6
    state = sampler.state_dict()
    fresh = ShuffleSampler(20, seed=2, rank=1, world_size=2)
    fresh.load_state_dict(state)
    assert list(fresh) == full[4:]
    with pytest.raises(ValueError, match="seed"):
        ShuffleSampler(20, seed=3).load_state_dict(state)
