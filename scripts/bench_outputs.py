#!/usr/bin/env python3
"""bge-m3's three outputs (dense + sparse + ColBERT) from one forward: embedsvc vs FlagEmbedding's way.

FlagEmbedding (the library bge-m3's authors ship) does not import with transformers 5, so the baseline
is its ``BGEM3FlagModel.encode`` logic written out: transformers' AutoModel plus the two heads,
tokenized without padding, sorted by length, padded batches of ``--ref-batch-size`` (its default 256),
dense = normalized CLS, sparse = relu(sparse_linear) with the max per token id, ColBERT =
normalized colbert_linear after CLS. Both run in this process on the same texts, alternating, best of
``--repeats``; the report gives texts/s and the ratio, and the largest difference between the outputs.

Without ``--model`` a random checkpoint in bge-m3's layout is built (XLM-RoBERTa, ``--layers`` x
``--hidden``, the bundled all-MiniLM-L6-v2 WordPiece vocabulary so texts get realistic token counts).

    python scripts/bench_outputs.py [--model FOLDER] [--texts 1000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc import Embedder  # noqa: E402
from embedsvc.engine.options import EmbedOptions  # noqa: E402
from embedsvc.engine.service import ModelService  # noqa: E402
from embedsvc.models.loading import default_model_path  # noqa: E402
from scripts.corpus import load_corpus  # noqa: E402

ALL = EmbedOptions(outputs=("dense", "sparse", "multi_vector"))


def build_checkpoint(folder: Path, *, hidden: int, layers: int) -> Path:
    """Random XLM-RoBERTa weights with bge-m3's files: ST files (CLS, Normalize), sparse_linear.pt and
    colbert_linear.pt."""
    import transformers

    tokenizer_dir = default_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tokenizer_dir / name, folder / name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    transformers.XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), folder / "sparse_linear.pt")
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), folder / "colbert_linear.pt")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, "pooling_mode_cls_token": True})
    )
    (folder / "2_Normalize").mkdir()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    return folder


class FlagM3Reference:
    """BGEM3FlagModel.encode(return_dense=True, return_sparse=True, return_colbert_vecs=True), written out."""

    def __init__(self, folder: Path, *, batch_size: int, max_length: int) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        hidden = self.model.config.hidden_size
        self.sparse_linear = torch.nn.Linear(hidden, 1)
        self.sparse_linear.load_state_dict(torch.load(folder / "sparse_linear.pt", map_location="cpu"))
        self.colbert_linear = torch.nn.Linear(hidden, hidden)
        self.colbert_linear.load_state_dict(torch.load(folder / "colbert_linear.pt", map_location="cpu"))
        self.batch_size = batch_size
        self.max_length = max_length
        self.unused = {
            self.tokenizer.convert_tokens_to_ids(self.tokenizer.special_tokens_map[name])
            for name in ("cls_token", "eos_token", "pad_token", "unk_token")
            if name in self.tokenizer.special_tokens_map
        }

    def _weights(self, token_weights: np.ndarray, input_ids: list[int]) -> dict[str, float]:
        result: dict[str, float] = defaultdict(int)
        for w, idx in zip(token_weights, input_ids, strict=False):
            if idx not in self.unused and w > 0 and w > result[str(idx)]:
                result[str(idx)] = w
        return result

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, Any]:
        inputs = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size], truncation=True, max_length=self.max_length
            )
            inputs += [{k: batch[k][i] for k in batch} for i in range(len(batch["input_ids"]))]
        order = np.argsort([-len(x["input_ids"]) for x in inputs])
        dense, lexical, colbert = [], [], []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer.pad(
                [inputs[i] for i in order[start : start + self.batch_size]], return_tensors="pt"
            )
            last = self.model(**batch, return_dict=True).last_hidden_state
            dense.append(F.normalize(last[:, 0], dim=-1).numpy())
            weights = torch.relu(self.sparse_linear(last)).squeeze(-1)
            lexical += map(self._weights, weights.numpy(), batch["input_ids"].numpy().tolist())
            vecs = self.colbert_linear(last[:, 1:]) * batch["attention_mask"][:, 1:][:, :, None].float()
            vecs = F.normalize(vecs, dim=-1)
            colbert += [
                v[: int(m.sum()) - 1]
                for v, m in zip(vecs.numpy(), batch["attention_mask"].numpy(), strict=True)
            ]
        back = np.argsort(order)
        return {
            "dense": np.concatenate(dense)[back],
            "sparse": [lexical[i] for i in back],
            "colbert": [colbert[i] for i in back],
        }


def largest_difference(ours: Any, ref: dict[str, Any]) -> float:
    worst = float(np.abs(ours.vectors - ref["dense"]).max())
    for (ids, weights), want in zip(ours.sparse, ref["sparse"], strict=True):
        mine = dict(zip(ids.tolist(), weights.tolist(), strict=True))
        for key in set(mine) | {int(k) for k in want}:
            worst = max(worst, abs(mine.get(key, 0.0) - float(want.get(str(key), 0.0))))
    for mine_v, want_v in zip(ours.multi_vectors, ref["colbert"], strict=True):
        worst = max(worst, float(np.abs(mine_v - want_v).max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="a folder in bge-m3's layout")
    parser.add_argument("--hidden", type=int, default=384, help="built checkpoint's width")
    parser.add_argument("--layers", type=int, default=6, help="built checkpoint's layers")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ref-batch-size", type=int, default=256, help="FlagEmbedding's encode default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    folder = args.model or build_checkpoint(Path(tempfile.mkdtemp()), hidden=args.hidden, layers=args.layers)
    texts = load_corpus(None, args.texts)
    service = ModelService.in_process(Embedder.from_pretrained(folder))
    reference = FlagM3Reference(folder, batch_size=args.ref_batch_size, max_length=service.facts.max_length)
    ours_out = service.embed_now(texts[:64], ALL)  # warm-up, and the agreement check below
    diff = largest_difference(ours_out, reference.encode(texts[:64]))

    rates: dict[str, list[float]] = {"embedsvc": [], "flagembedding_logic": [], "embedsvc_dense_only": []}
    runs = {
        "embedsvc": lambda: service.embed_now(texts, ALL),
        "flagembedding_logic": lambda: reference.encode(texts),
        "embedsvc_dense_only": lambda: service.embed_now(texts),
    }
    for _ in range(args.repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            rates[name].append(len(texts) / (time.perf_counter() - started))
    best = {name: max(values) for name, values in rates.items()}
    tokens = sum(service.embed_now(texts[:500]).token_counts) / min(500, len(texts))
    report = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "model": str(args.model or f"random bge-m3 layout, {args.layers} x {args.hidden}"),
        "texts": len(texts),
        "mean_tokens": round(tokens, 1),
        "texts_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio_three_outputs_vs_flagembedding_logic": round(
            best["embedsvc"] / best["flagembedding_logic"], 2
        ),
        "three_outputs_cost_vs_dense_only": round(best["embedsvc_dense_only"] / best["embedsvc"], 2),
        "max_abs_difference_to_reference": diff,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
