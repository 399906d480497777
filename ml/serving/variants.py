"""The serving A/B test: which strategy answers a user's recommendations, drawn by the project's one seeded hash
(``ml.experiments.assignment.hash_unit``) with the experiment key, so a user keeps their variant between requests,
workers and restarts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ml.experiments.assignment import hash_unit

CHAMPION = "champion"  # the published list of the @champion ranker, re-scored for context and session
POPULARITY = "popularity"  # the zone's merchants with the most customers
COSINE = "cosine"  # item-item co-order neighbours of the merchants the user ordered from
STRATEGIES = (CHAMPION, POPULARITY, COSINE)


@dataclass(frozen=True)
class ServingExperiment:
    key: str
    shares: tuple[tuple[str, float], ...]

    @classmethod
    def from_settings(cls, key: str, entries: tuple[str, ...]) -> ServingExperiment:
        """``("champion:0.8", "popularity:0.2")``; a clear error for unknown strategies or shares not adding to 1."""
        shares = []
        for entry in entries:
            name, _, share = entry.partition(":")
            if name not in STRATEGIES:
                raise ValueError(
                    f"REKINDLE_SERVING_STRATEGIES: unknown strategy {name!r}; known: {', '.join(STRATEGIES)}"
                )
            try:
                value = float(share)
            except ValueError:
                raise ValueError(f"REKINDLE_SERVING_STRATEGIES: {entry!r} is not strategy:share") from None
            if value < 0:
                raise ValueError(f"REKINDLE_SERVING_STRATEGIES: {entry!r} has a negative share")
            shares.append((name, value))
        if not shares or not math.isclose(sum(v for _, v in shares), 1.0, abs_tol=1e-9):
            raise ValueError(f"REKINDLE_SERVING_STRATEGIES: the shares must add up to 1, got {entries}")
        if len({name for name, _ in shares}) != len(shares):
            raise ValueError(f"REKINDLE_SERVING_STRATEGIES: a strategy is listed twice in {entries}")
        return cls(key, tuple(shares))

    def variant(self, user_id: str) -> str:
        unit = hash_unit(self.key, user_id)
        edge = 0.0
        for name, share in self.shares:
            edge += share
            if unit < edge:
                return name
        return self.shares[-1][0]
