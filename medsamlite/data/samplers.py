"""Modality-balanced sampling: draw dataset items so each modality gets a chosen share of an epoch.

The sampler runs in the DataLoader's main process and only hands indices to the workers, so its
draws do not depend on `num_workers`. Each epoch's draw comes from a generator seeded with
(seed, epoch): `set_epoch(e)` reproduces epoch e exactly (e.g. after a resume); without it, each
new iteration advances to the next epoch, so consecutive epochs never repeat a draw.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler


def modality_probabilities(counts: Mapping[str, int], probabilities: Mapping[str, float] | None = None,
                           temperature: float | None = None) -> dict[str, float]:
    """Per-modality sampling probabilities from item counts.

    `probabilities` fixes some modalities' shares (e.g. CT 0.4, MR 0.1); the others share the rest,
    equally, or by temperature-scaled frequency n^(1/T) when `temperature` is given too. With only
    `temperature`, T=1 is the natural frequency and T=inf uniform over modalities.
    """
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (inf for uniform), got {temperature}")
    fixed = dict(probabilities or {})
    unknown = sorted(set(fixed) - set(counts))
    if unknown:
        raise ValueError(f"probabilities name modalities {unknown} that have no items; present: {sorted(counts)}")
    bad = {m: p for m, p in fixed.items() if not 0 <= p <= 1}
    if bad:
        raise ValueError(f"probabilities must lie in [0, 1]; got {bad}")
    rest = [m for m in counts if m not in fixed]
    remainder = 1.0 - sum(fixed.values())
    if remainder < -1e-9:
        raise ValueError(f"probabilities sum to {sum(fixed.values()):.6g} > 1: {fixed}")
    if not rest and abs(remainder) > 1e-9:
        raise ValueError(f"probabilities sum to {sum(fixed.values()):.6g}, not 1, and no other modality "
                         f"is present to take the remaining {remainder:.6g}: {fixed}")
    if rest:
        if temperature is None and probabilities is not None:
            scores = {m: 1.0 for m in rest}
        elif temperature is None or temperature == 1:
            scores = {m: float(counts[m]) for m in rest}
        elif math.isinf(temperature):
            scores = {m: 1.0 for m in rest}
        else:
            scores = {m: float(counts[m]) ** (1.0 / temperature) for m in rest}
        total = sum(scores.values())
        fixed.update({m: max(remainder, 0.0) * s / total for m, s in scores.items()})
    return {m: fixed[m] for m in sorted(counts)}


class ModalityBalancedSampler(Sampler[int]):
    """Draw `num_samples` item indices per epoch, with replacement, at chosen per-modality probabilities.

    `modalities` has one modality name per dataset item; within a modality items are uniform.
    `probabilities` and `temperature` are as in `modality_probabilities`; with neither, items are
    drawn at their natural frequency. `num_samples` defaults to the number of items.
    """

    def __init__(self, modalities: Sequence[str], probabilities: Mapping[str, float] | None = None,
                 temperature: float | None = None, num_samples: int | None = None, seed: int = 0) -> None:
        if len(modalities) == 0:
            raise ValueError("ModalityBalancedSampler needs at least one item")
        self.modalities = list(modalities)
        counts = Counter(self.modalities)
        self.probabilities = modality_probabilities(counts, probabilities, temperature)
        self.num_samples = len(self.modalities) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.seed, self.epoch = seed, 0
        self._weights = np.array([self.probabilities[m] / counts[m] for m in self.modalities])
        self._weights /= self._weights.sum()
        self._drawn: Counter[str] = Counter()

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw epoch `epoch`'s indices."""
        self.epoch = epoch

    def indices(self, epoch: int) -> np.ndarray:
        """The indices of epoch `epoch` (a pure function of seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        return rng.choice(len(self.modalities), size=self.num_samples, replace=True, p=self._weights)

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for i in self.indices(epoch).tolist():
            self._drawn[self.modalities[i]] += 1  # counted as handed out, so a stopped epoch counts right
            yield i

    def __len__(self) -> int:
        return self.num_samples

    def realised_proportions(self) -> dict[str, float]:
        """Share of each modality among all indices handed out so far (all epochs)."""
        total = sum(self._drawn.values())
        return {m: (self._drawn[m] / total if total else 0.0) for m in self.probabilities}

    def report(self) -> str:
        """A table of target vs realised proportions and counts per modality."""
        realised = self.realised_proportions()
        lines = [f"{'modality':<14}{'target':>8}{'realised':>10}{'drawn':>8}"]
        lines += [f"{m:<14}{p:>8.3f}{realised[m]:>10.3f}{self._drawn[m]:>8d}" for m, p in self.probabilities.items()]
        return "\n".join(lines)
