#!/usr/bin/env python3
"""What refused heavy callers cost a light one (issue 20 item 9), as ratios against a baseline in one run.

Starts ``embedsvc serve`` (the bundled model) and measures a light caller (one short text every 100 ms)
in three phases: alone (the baseline); beside N heavy callers that retry at once after each refusal; and
beside N heavy callers that wait as each refusal's ``retry-after-ms`` trailer says. Prints the light
caller's median and p90 per phase, their ratio to the baseline, and the heavy callers' refusals per
second. Raw gRPC stubs, so no client-side retry policy is involved.

    python scripts/bench_refusals.py                     # 8 heavy callers x 256 texts, 20 s a phase
    python scripts/bench_refusals.py --heavy 12 --seconds 30 --json bench-results/refusals.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc.v1 import embedding_pb2 as pb  # noqa: E402
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc  # noqa: E402
from tests.server_utils import ServerProcess  # noqa: E402

# a connection of its own per caller (a tenant of its own): gRPC would share one across the process
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def heavy_caller(
    target: str, texts: list[str], stop: threading.Event, honour: bool, refusals: list[int]
) -> None:
    with grpc.insecure_channel(target, options=OWN_CONNECTION) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        request = pb.EmbedRequest(inputs=texts)
        while not stop.is_set():
            try:
                stub.Embed(request, timeout=120)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(0.1)
                    continue
                refusals[0] += 1
                if honour:
                    hint = dict(exc.trailing_metadata() or ()).get("retry-after-ms")
                    stop.wait(int(hint) / 1000 if hint else 1.0)


def light_caller(target: str, seconds: float) -> list[float]:
    latencies = []
    with grpc.insecure_channel(target, options=OWN_CONNECTION) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        ends = time.monotonic() + seconds
        i = 0
        while time.monotonic() < ends:
            started = time.perf_counter()
            stub.Embed(pb.EmbedRequest(inputs=[f"light request {i}"]), timeout=60)
            latencies.append(time.perf_counter() - started)
            i += 1
            time.sleep(0.1)
    return latencies


def phase(target: str, heavy: int, texts: list[str], seconds: float, honour: bool | None) -> dict[str, float]:
    stop = threading.Event()
    refusals = [0]
    threads = [
        threading.Thread(target=heavy_caller, args=(target, texts, stop, bool(honour), refusals))
        for _ in range(heavy if honour is not None else 0)
    ]
    for thread in threads:
        thread.start()
    time.sleep(2 if threads else 0)  # let the queue fill
    counted_from = refusals[0]
    latencies = light_caller(target, seconds)
    refused = refusals[0] - counted_from
    stop.set()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies)
    return {
        "light_median_s": statistics.median(ordered),
        "light_p90_s": ordered[int(0.9 * (len(ordered) - 1))],
        "refusals_per_s": refused / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heavy", type=int, default=8, help="heavy callers")
    parser.add_argument("--texts", type=int, default=256, help="texts per heavy request")
    parser.add_argument("--seconds", type=float, default=20, help="light caller's time per phase")
    parser.add_argument("--max-queue-seconds", default="2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    texts = [f"a heavier text number {i}, with a few more words in it to embed" for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as folder, ServerProcess(
        "--max-queue-seconds", args.max_queue_seconds, "--max-inputs-per-request", "4096",
        log_path=Path(folder) / "server.log",
    ) as server:  # fmt: skip
        results = {
            "alone": phase(server.target, args.heavy, texts, args.seconds, None),
            "retry_at_once": phase(server.target, args.heavy, texts, args.seconds, False),
            "honour_hint": phase(server.target, args.heavy, texts, args.seconds, True),
        }
    base = results["alone"]["light_median_s"]
    for name, result in results.items():
        result["median_ratio"] = result["light_median_s"] / base
        print(
            f"{name:14s} light median {result['light_median_s'] * 1000:7.1f} ms  p90 "
            f"{result['light_p90_s'] * 1000:7.1f} ms  x{result['median_ratio']:.2f} of alone  "
            f"refusals/s {result['refusals_per_s']:.0f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
