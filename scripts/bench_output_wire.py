#!/usr/bin/env python3
"""What sparse and multi-vector outputs cost on the wire: the server's building and serializing of an
EmbedResponse, the client's parsing and decoding, and the bytes, against a baseline in the same run —
a dense float32 response holding the same floats (one row per token), the bulk-packed path.

No model runs: the outputs are random arrays of bge-m3's shapes (``--dim`` 1024, ``--tokens`` per
input, ``--nnz`` sparse weights per input over a 250 002-token vocabulary). Best of ``--repeats``.

    python scripts/bench_output_wire.py [--inputs 256] [--tokens 100] [--dim 1024] [--nnz 60]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from embedsvc import wire
from embedsvc.v1 import embedding_pb2 as pb

VOCABULARY = 250_002


def best(repeats: int, work: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--nnz", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, tokens, dim = args.inputs, args.tokens, args.dim
    multi = [rng.standard_normal((tokens, dim)).astype(np.float32) for _ in range(n)]
    sparse = [
        (
            np.sort(rng.choice(VOCABULARY, args.nnz, replace=False)).astype(np.int32),
            rng.random(args.nnz, np.float32),
        )
        for _ in range(n)
    ]
    empty = np.zeros((n, 0), np.float32)

    def baseline() -> bytes:
        rows = np.concatenate(multi)
        return wire.embed_response(
            request_id="", model="m", vectors=rows, token_counts=[1] * len(rows),
            encoding=pb.ENCODING_FLOAT32, total_tokens=len(rows),
        ).SerializeToString()  # fmt: skip

    def outputs(encoding: int) -> Callable[[], bytes]:
        def build() -> bytes:
            response = wire.embed_response(
                request_id="", model="m", vectors=empty, token_counts=[tokens] * n,
                encoding=pb.ENCODING_FLOAT32, total_tokens=n * tokens,
            )  # fmt: skip
            wire.add_outputs(
                response, sparse=sparse, sparse_dimension=VOCABULARY, multi_vectors=multi, encoding=encoding
            )
            return response.SerializeToString()

        return build

    print(
        f"{n} inputs x {tokens} tokens x {dim} dims ({n * tokens * dim / 1e6:.1f} M floats), "
        f"{args.nnz} sparse weights each"
    )
    base_build, raw = best(args.repeats, baseline)
    base_read, _ = best(args.repeats, lambda: wire.embeddings(pb.EmbedResponse.FromString(raw)))
    print(
        f"{'dense rows (baseline)':28} {len(raw) / 1e6:7.1f} MB  build {base_build * 1e3:7.1f} ms  "
        f"read {base_read * 1e3:7.1f} ms"
    )
    for name, encoding in (
        ("sparse + multi float32", pb.ENCODING_FLOAT32),
        ("sparse + multi float16", pb.ENCODING_FLOAT16),
    ):
        build, data = best(args.repeats, outputs(encoding))
        read, _ = best(
            args.repeats,
            lambda data=data: wire.embed_outputs(
                pb.EmbedResponse.FromString(data), ("sparse", "multi_vector")
            ),
        )
        print(
            f"{name:28} {len(data) / 1e6:7.1f} MB  build {build * 1e3:7.1f} ms  read {read * 1e3:7.1f} ms"
            f"  (x{build / base_build:.2f} / x{read / base_read:.2f} the baseline)"
        )


if __name__ == "__main__":
    main()
