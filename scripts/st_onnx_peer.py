#!/usr/bin/env python3
"""sentence-transformers' own ONNX paths, the peer scripts/bench.py compares quantize="int8" with.

Runs inside its own environment (``make st-onnx-venv``: sentence-transformers[onnx] pins an older
transformers than embedsvc uses). Loads a copy of the checkpoint with sentence-transformers three ways
— torch float32, ``backend="onnx"`` float32, and ``export_dynamic_quantized_onnx_model`` int8 with the
configuration for this CPU (``avx512_vnni`` where it has VNNI, else ``avx2``; on a VNNI CPU the ``avx2``
one too) — and times ``encode`` in rounds of all of them back to back. Prints JSON; writes the vectors
as .npy files.

    python scripts/st_onnx_peer.py MODEL_DIR TEXTS.json OUT_DIR [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("texts", type=Path, help='JSON: {"texts": [...], "extra": [...]} (extra: untimed)')
    parser.add_argument("out", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    data = json.loads(args.texts.read_text())
    texts, extra = data["texts"], data.get("extra", [])
    config = "avx512_vnni" if has_vnni() else "avx2"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        shutil.copytree(args.model, folder)  # exports are written into the model folder
        models = {"st_torch_fp32": SentenceTransformer(str(folder), device="cpu")}
        models["st_onnx_fp32"] = SentenceTransformer(str(folder), device="cpu", backend="onnx")
        # the int8 configuration for this CPU, and the avx2 one the issue measured with where they differ
        int8_files = {}
        for name, chosen in (("st_onnx_int8", config), ("st_onnx_int8_avx2", "avx2")):
            if name == "st_onnx_int8_avx2" and config == "avx2":
                continue
            export_dynamic_quantized_onnx_model(models["st_onnx_fp32"], chosen, str(folder))
            int8_files[name] = next((folder / "onnx").glob(f"model_q*{chosen}.onnx")).relative_to(folder)
        for name, int8_file in int8_files.items():
            models[name] = SentenceTransformer(
                str(folder), device="cpu", backend="onnx", model_kwargs={"file_name": str(int8_file)}
            )
        for model in models.values():
            model.encode(texts[:32])
        seconds: dict[str, list[float]] = {name: [] for name in models}
        vectors = {}
        for _ in range(args.repeats):
            for name, model in models.items():
                started = time.perf_counter()
                vectors[name] = model.encode(texts, batch_size=32, convert_to_numpy=True)
                seconds[name].append(time.perf_counter() - started)
        result = {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "int8_config": config,
            "int8_files": {name: str(path) for name, path in int8_files.items()},
        }
        for name, model in models.items():
            np.save(args.out / f"{name}.npy", vectors[name])
            if extra:
                np.save(
                    args.out / f"{name}.extra.npy", model.encode(extra, batch_size=32, convert_to_numpy=True)
                )
            ratios = [t / s for t, s in zip(seconds["st_torch_fp32"], seconds[name], strict=True)]
            result[name] = {
                "texts_per_s": len(texts) / min(seconds[name]),
                "ratio_to_st": statistics.median(ratios),
                "ratios_to_st": [round(r, 3) for r in ratios],
            }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
