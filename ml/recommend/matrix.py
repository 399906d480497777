"""A users x items sparse matrix together with the ids of its rows and columns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass(frozen=True)
class InteractionMatrix:
    csr: sp.csr_matrix
    user_ids: pd.Index
    item_ids: pd.Index

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        user_col: str = "user_id",
        item_col: str = "item_id",
        weight_col: str | None = None,
        users: Iterable | None = None,
        items: Iterable | None = None,
    ) -> InteractionMatrix:
        """Sum the weights (1 per row without ``weight_col``) of each (user, item) pair.

        ``users`` / ``items`` fix the row / column order, e.g. to keep users without interactions or
        to share the columns of another matrix; rows whose ids are not among them are dropped.
        """
        user_ids = pd.Index(pd.unique(df[user_col]) if users is None else list(users), name=user_col)
        item_ids = pd.Index(pd.unique(df[item_col]) if items is None else list(items), name=item_col)
        rows = user_ids.get_indexer(df[user_col])
        cols = item_ids.get_indexer(df[item_col])
        weights = np.ones(len(df), dtype=np.float32) if weight_col is None else df[weight_col].to_numpy(np.float32)
        known = (rows >= 0) & (cols >= 0)
        csr = sp.csr_matrix(
            (weights[known], (rows[known], cols[known])), shape=(len(user_ids), len(item_ids)), dtype=np.float32
        )
        csr.sum_duplicates()
        return cls(csr=csr, user_ids=user_ids, item_ids=item_ids)

    @property
    def shape(self) -> tuple[int, int]:
        return self.csr.shape

    def user_indices(self, user_ids: Iterable) -> np.ndarray:
        """Row positions of the ids; -1 for unknown ids."""
        return self.user_ids.get_indexer(list(user_ids))

    def item_indices(self, item_ids: Iterable) -> np.ndarray:
        """Column positions of the ids; -1 for unknown ids."""
        return self.item_ids.get_indexer(list(item_ids))

    def to_frame(self) -> pd.DataFrame:
        """The non-zero cells as (user id, item id, weight) rows."""
        coo = self.csr.tocoo()
        return pd.DataFrame(
            {
                self.user_ids.name or "user_id": self.user_ids[coo.row],
                self.item_ids.name or "item_id": self.item_ids[coo.col],
                "weight": coo.data,
            }
        )
