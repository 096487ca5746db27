"""Seeded samplers for training: a shuffle and a modality-balanced draw, sharded across ranks and resumable.

Each epoch's global stream of item indices is a pure function of (seed, epoch). Under N processes
rank r takes the stream's items r::N (the stream cut to a multiple of N, so every rank runs the same
number of batches): the ranks' shards are disjoint and together are the single-process stream, and
global batch j of N processes x batch B is the single-process batch j of batch N x B. `set_epoch(e,
start)` makes the next iteration yield epoch e's shard from its item `start` (a mid-epoch resume);
`state_dict()` / `load_state_dict()` carry the same. The sampler runs in the DataLoader's main
process and only hands indices to the workers, so its draws do not depend on `num_workers`.
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


class StreamSampler(Sampler[int]):
    """One seeded global stream of indices per epoch; this rank's shard of it, from a start position."""

    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.seed, self.epoch, self.start = seed, 0, 0
        self.shard(rank, world_size)

    def shard(self, rank: int, world_size: int) -> "StreamSampler":
        """Take items `rank::world_size` of every epoch's stream."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        return self

    def stream(self, epoch: int) -> np.ndarray:
        """Every rank's indices of epoch `epoch`, in order (a pure function of seed and epoch)."""
        raise NotImplementedError

    def stream_length(self) -> int:
        raise NotImplementedError

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's indices of epoch `epoch`: the stream cut to a multiple of the world size, then r::N."""
        stream = self.stream(epoch)
        return stream[: len(stream) // self.world_size * self.world_size][self.rank:: self.world_size]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next iteration yield epoch `epoch` from this rank's item `start`."""
        self.epoch, self.start = epoch, start

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler {self.seed}")
        self.set_epoch(int(state["epoch"]), int(state["start"]))

    def _take(self, index: int) -> None:
        """Called as each index is handed out."""

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        for i in self.indices(epoch)[start:].tolist():
            self._take(i)
            yield i

    def __len__(self) -> int:
        return self.stream_length() // self.world_size - self.start


class ShuffleSampler(StreamSampler):
    """A seeded permutation of `num_items` items per epoch (the default training order)."""

    def __init__(self, num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_items <= 0:
            raise ValueError(f"ShuffleSampler needs at least one item, got {num_items}")
        self.num_items = num_items
        super().__init__(seed, rank, world_size)

    def stream(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def stream_length(self) -> int:
        return self.num_items


class ModalityBalancedSampler(StreamSampler):
    """Draw `num_samples` item indices per epoch, with replacement, at chosen per-modality probabilities.

    `modalities` has one modality name per dataset item; within a modality items are uniform.
    `probabilities` and `temperature` are as in `modality_probabilities`; with neither, items are
    drawn at their natural frequency. `num_samples` defaults to the number of items; it is the
    length of the global stream, which `shard` splits across ranks.
    """

    def __init__(self, modalities: Sequence[str], probabilities: Mapping[str, float] | None = None,
                 temperature: float | None = None, num_samples: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(modalities) == 0:
            raise ValueError("ModalityBalancedSampler needs at least one item")
        self.modalities = list(modalities)
        counts = Counter(self.modalities)
        self.probabilities = modality_probabilities(counts, probabilities, temperature)
        self.num_samples = len(self.modalities) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        super().__init__(seed, rank, world_size)
        self._weights = np.array([self.probabilities[m] / counts[m] for m in self.modalities])
        self._weights /= self._weights.sum()
        self._drawn: Counter[str] = Counter()

    def stream(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.choice(len(self.modalities), size=self.num_samples, replace=True, p=self._weights)

    def stream_length(self) -> int:
        return self.num_samples

    def _take(self, index: int) -> None:
        self._drawn[self.modalities[index]] += 1  # counted as handed out, so a stopped epoch counts right

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
