"""Batch planning: group sequences by length under a token budget."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(
    lengths: Sequence[int], *, token_budget: int, max_batch_size: int, packed: bool
) -> list[list[int]]:
    """Indices grouped into batches, longest sequences first.

    Padded batches cost ``rows x longest`` tokens (padding counted); packed
    batches cost the sum of their lengths. A sequence longer than the budget
    still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    cost = 0
    for i in order:
        new_cost = (
            cost + lengths[i]
            if packed
            else (len(current) + 1) * (lengths[current[0]] if current else lengths[i])
        )
        if current and (new_cost > token_budget or len(current) >= max_batch_size):
            batches.append(current)
            current, new_cost = [], lengths[i]
        current.append(i)
        cost = new_cost
    if current:
        batches.append(current)
    return batches
