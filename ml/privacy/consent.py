"""Personalisation opt-out: the published lists of users who withdrew it are not personalised.

``marts.user_features.personalisation_opt_out`` (a ``personalisation_opt_out`` event) makes the daily publish give
the user the model's cold-start list, the most ordered merchants of their home zone (or of the marketplace), in
both modes, instead of lists scored from their history. Marketing opt-out needs nothing here: it is
``marketing_opt_in`` in the same mart, which every marketing output already reads.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from ml.recommend.modes import DISCOVERY, MODES


class NonPersonalisedFor:
    """A fitted merchant recommender whose lists for ``opted_out`` users are its cold-start (popularity) lists."""

    def __init__(self, recommender, opted_out: Iterable[str]):
        self.recommender = recommender
        self.opted_out = pd.Index(list(opted_out))

    def recommend(self, user_ids, n: int = 10, mode: str = DISCOVERY) -> pd.DataFrame:
        users = pd.Index(list(user_ids))
        opted_out = users.isin(self.opted_out)
        frames = []
        if (~opted_out).any():
            frames.append(self.recommender.recommend(list(users[~opted_out]), n=n, mode=mode))
        if opted_out.any():
            frames.append(self.recommender.cold_start.recommend(users[opted_out], n))
        return pd.concat(frames, ignore_index=True) if frames else self.recommender.recommend([], n=n, mode=mode)

    def recommend_modes(self, user_ids, n: int = 10, modes=tuple(MODES)) -> pd.DataFrame:
        """``recommend`` in each of ``modes``, with a ``mode`` column."""
        users = pd.Index(list(user_ids))
        opted_out = users.isin(self.opted_out)
        frames = [self.recommender.recommend_modes(list(users[~opted_out]), n=n, modes=modes)]
        if opted_out.any():
            cold = self.recommender.cold_start.recommend(users[opted_out], n)
            frames += [cold.assign(mode=mode) for mode in modes]
        return pd.concat(frames, ignore_index=True)
