"""One thread budget for the host path: torch's intra-op threads, the Rust tokenizer's pool, and how
idle OpenMP threads wait.

* Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, set by
  :func:`default_wait_policy` when the engine package is imported, before torch loads its OpenMP
  runtime; a value already in the environment wins). With spinning threads, a 2-core machine shared
  with another busy process collapsed: a 1-layer model's ``embed`` fell from 0.5x to 0.03-0.05x of the
  tokenizer's rate with two torch threads; sleeping threads kept it at 0.47-0.55x (docs/performance.md).
* ``threads`` (the engine option, or ``EMBEDSVC_THREADS``) sizes torch's intra-op pool and, when set
  before the first batch is tokenized, the tokenizer's Rust pool (``RAYON_NUM_THREADS``), so the
  forward and the tokenizer share the cores given to the process instead of each taking all of them.
  Unset: both use every core, as before. torch's pool is process-wide: the last model loaded sets it.
"""

from __future__ import annotations

import os

from embedsvc.errors import InvalidInputError

ENV_THREADS = "EMBEDSVC_THREADS"
# how a CPU forward uses its threads (engine/cpu_parallel.py): whole batches side by side, one intra-op
# thread each, or one batch at a time on torch's intra-op threads
CPU_PARALLELISM = ("batches", "operators")


def check_parallelism(value: object) -> str:
    """The ``cpu_parallelism`` choice (unset: "batches"), or InvalidInputError naming the choices."""
    choice = "batches" if value is None else value
    if choice not in CPU_PARALLELISM:
        raise InvalidInputError(
            f"unknown cpu_parallelism {value!r}; choose one of {', '.join(CPU_PARALLELISM)}",
            field="cpu_parallelism",
        )
    return str(choice)


def default_wait_policy() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def resolve_threads(option: object) -> int | None:
    """The thread budget from the engine option, else ``EMBEDSVC_THREADS``, else None (every core)."""
    source = "threads"
    value = option
    if value is None:
        value, source = os.environ.get(ENV_THREADS) or None, ENV_THREADS
    if value is None:
        return None
    try:
        threads = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        threads = 0
    if isinstance(value, bool) or threads < 1:
        raise InvalidInputError(
            f"{source} must be a whole number of threads >= 1, got {value!r}", field="threads"
        )
    return threads


def apply_threads(threads: int | None) -> None:
    """Size torch's intra-op pool and (if it has not started yet) the tokenizer's Rust pool."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
