"""Sparse and multi-vector outputs: heads over the token states of the same forward pass.

A model's pooled vector ("dense") comes from pooling (engine/pooling.py). The checkpoints that
models/heads.py recognises offer more, computed here from the token states the forward already has:

* "sparse": one weight per vocabulary id. bge-m3: ``relu(sparse_linear(h))`` per token, the max per
  token id, its CLS/EOS/PAD/UNK tokens dropped (FlagEmbedding's ``_process_token_weights``). SPLADE:
  ``log(1 + relu(MLM logits))`` (twice for ``log1p_relu``), max or sum over the sequence's tokens
  (sentence-transformers' SpladePooling).
* "multi_vector": one L2-normalized vector per token. bge-m3: ``colbert_linear`` over every token but
  CLS. ColBERT: the linear projection over every token of a query (its [MASK] expansion included) and
  over a document's tokens that are not in the skiplist (punctuation).

The heads run in float32 over the packed token states of a batch: one matmul per head for the whole
batch, never a padded [batch, length, vocabulary] tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from embedsvc.engine.deterministic import make_batch_invariant
from embedsvc.engine.inputs import EncodedInput
from embedsvc.errors import ModelLoadError
from embedsvc.models.heads import BGE_M3, COLBERT, SPLADE, ColbertSettings, OutputFiles

OUTPUT_KINDS = ("dense", "sparse", "multi_vector")
SparseVector = tuple[np.ndarray, np.ndarray]  # (token ids int32 ascending, weights float32 > 0)
# SPLADE: MLM logits computed for at most this many tokens at once ([tokens, vocabulary] float32)
SPLADE_BLOCK_TOKENS = 1024


@dataclass
class TokenOutputs:
    """One sequence's outputs beyond its pooled vector."""

    sparse: SparseVector | None = None
    multi_vector: torch.Tensor | None = None  # float32 [kept tokens, width], on the CPU


class Forwarded:
    """A batch's results: pooled vectors ``[n, d]`` and each sequence's :class:`TokenOutputs`.
    Indexing gives one sequence's row; :func:`join_rows` puts rows back together (the scheduler
    splits a batch among its requests this way)."""

    def __init__(self, pooled: torch.Tensor, tokens: list[TokenOutputs]) -> None:
        self.pooled = pooled
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, TokenOutputs]:
        return self.pooled[row], self.tokens[row]


def join_rows(rows: Sequence[Any]) -> Any:
    """Rows of a forward's result (tensor rows, or :class:`Forwarded` rows) as one result, in order."""
    if not rows or isinstance(rows[0], torch.Tensor):
        return torch.stack(list(rows))
    return Forwarded(torch.stack([r[0] for r in rows]), [r[1] for r in rows])


def max_per_id(ids: np.ndarray, weights: np.ndarray) -> SparseVector:
    """Each token id once, with its largest weight; ids ascending."""
    unique, inverse = np.unique(ids, return_inverse=True)
    best = np.zeros(len(unique), dtype=np.float32)
    np.maximum.at(best, inverse, weights.astype(np.float32, copy=False))
    return unique.astype(np.int32), best


class ColbertInputs:
    """ColBERT's inputs: a marker token after [CLS], queries cut or padded with [MASK] to a fixed
    length (the expansion tokens attend but are not attended to unless the checkpoint says so),
    documents cut to their length."""

    def __init__(self, tokenizer: Any, settings: ColbertSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.query_marker = self._token_id(settings.query_prefix, "query_prefix")
        self.document_marker = self._token_id(settings.document_prefix, "document_prefix")
        self.mask_id: int | None = tokenizer.mask_token_id
        if settings.do_query_expansion and self.mask_id is None:
            raise ModelLoadError(
                "a ColBERT checkpoint with query expansion needs a tokenizer with a mask token"
            )
        # as PyLate resolves them: a word outside the vocabulary stands for the unknown token
        self.skip_ids = np.array(
            sorted({tokenizer.convert_tokens_to_ids(w) for w in settings.skiplist_words}), dtype=np.int64
        )

    def _token_id(self, token: str, name: str) -> int | None:
        if token == "":
            return None
        found = self.tokenizer.convert_tokens_to_ids(token)
        if found is None or (found == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ModelLoadError(f"the ColBERT {name} {token!r} is not a token of the checkpoint's tokenizer")
        return int(found)

    def encode(self, texts: Sequence[str], *, query: bool, first_index: int = 0) -> list[EncodedInput]:
        s = self.settings
        length = s.query_length if query else s.document_length
        marker = self.query_marker if query else self.document_marker
        budget = length - 1 if marker is not None else length
        batch = self.tokenizer(list(texts), truncation=True, max_length=budget, add_special_tokens=True)
        encoded = []
        for i, ids in enumerate(batch["input_ids"]):
            real = [ids[0], marker, *ids[1:]] if marker is not None else list(ids)
            attended = None
            full = real
            if query and s.do_query_expansion and len(real) < length:
                assert self.mask_id is not None
                full = real + [self.mask_id] * (length - len(real))
                attended = None if s.attend_to_expansion_tokens else len(real)
            encoded.append(
                EncodedInput(
                    ids=full,
                    pool_start=0,
                    pool_end=len(real),
                    text_tokens=len(real),
                    source=first_index + i,
                    extra_outputs=("multi_vector",),
                    attended=attended,
                    query=query,
                )
            )
        return encoded


class OutputHeads:
    """The heads of one served model, built from what models/heads.py read."""

    def __init__(
        self,
        files: OutputFiles,
        *,
        tokenizer: Any,
        vocab_size: int,
        mlm_head: torch.nn.Module | None,
        device: torch.device,
        tile_rows: int | None,
    ) -> None:
        self.kind = files.kind
        self.offered = files.outputs
        self.splade_pooling = files.splade_pooling
        self.splade_activation = files.splade_activation
        self.sparse_linear = None
        if files.sparse_linear is not None:
            self.sparse_linear = torch.nn.Sequential(files.sparse_linear).to(device, torch.float32)
        self.projection = torch.nn.Sequential(*files.projection).to(device, torch.float32)
        self.mlm_head = mlm_head
        if files.kind == SPLADE and mlm_head is None:
            raise ModelLoadError("a SPLADE checkpoint loaded without its masked-LM head")
        self.sparse_dimension = vocab_size if "sparse" in files.outputs else None
        self.multi_vector_dimension = None
        if "multi_vector" in files.outputs:
            widths = [
                int(m.out_features) for m in self.projection.modules() if isinstance(m, torch.nn.Linear)
            ]
            self.multi_vector_dimension = widths[-1]
        if tile_rows:  # deterministic mode: every head's GEMMs over fixed row tiles, as the encoder's
            for module in (self.sparse_linear, self.projection, self.mlm_head):
                if module is not None:
                    make_batch_invariant(module, tile_rows)
        # bge-m3 drops these ids from its sparse weights (FlagEmbedding: cls, eos, pad and unk tokens)
        unused = {getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "eos", "pad", "unk")}
        self.unused_ids = np.array(sorted(i for i in unused if i is not None), dtype=np.int64)
        self.colbert = ColbertInputs(tokenizer, files.colbert) if files.colbert is not None else None

    @property
    def is_colbert(self) -> bool:
        return self.kind == COLBERT

    def compute(
        self, flat: torch.Tensor, seqs: Sequence[EncodedInput], bounds: np.ndarray
    ) -> list[TokenOutputs]:
        """Each sequence's requested extras from the batch's token states ``flat [tokens, hidden]``
        (sequence ``i`` is rows ``bounds[i]:bounds[i + 1]``)."""
        flat = flat.float()
        results = [TokenOutputs() for _ in seqs]
        sparse_rows = [i for i, s in enumerate(seqs) if "sparse" in s.extra_outputs]
        multi_rows = [i for i, s in enumerate(seqs) if "multi_vector" in s.extra_outputs]
        if sparse_rows:
            if self.kind == SPLADE:
                self._splade(flat, seqs, bounds, sparse_rows, results)
            else:
                self._token_weights(flat, seqs, bounds, sparse_rows, results)
        if multi_rows:
            self._multi_vectors(flat, seqs, bounds, multi_rows, results)
        return results

    def _token_weights(
        self,
        flat: torch.Tensor,
        seqs: Sequence[EncodedInput],
        bounds: np.ndarray,
        rows: list[int],
        results: list[TokenOutputs],
    ) -> None:
        assert self.sparse_linear is not None
        weights = torch.relu(self.sparse_linear(flat)).squeeze(-1).cpu().numpy()
        for i in rows:
            ids = np.asarray(seqs[i].ids, dtype=np.int64)
            w = weights[bounds[i] : bounds[i + 1]]
            keep = (w > 0) & ~np.isin(ids, self.unused_ids)
            results[i].sparse = max_per_id(ids[keep], w[keep])

    def _splade(
        self,
        flat: torch.Tensor,
        seqs: Sequence[EncodedInput],
        bounds: np.ndarray,
        rows: list[int],
        results: list[TokenOutputs],
    ) -> None:
        # blocks of whole sequences (a long one alone, in slices): [tokens, vocabulary] stays bounded
        lengths = {i: int(bounds[i + 1] - bounds[i]) for i in rows}
        k = 0
        while k < len(rows):
            stop, size = k + 1, lengths[rows[k]]
            while stop < len(rows) and size + lengths[rows[stop]] <= SPLADE_BLOCK_TOKENS:
                size += lengths[rows[stop]]
                stop += 1
            block = rows[k:stop]
            if size > SPLADE_BLOCK_TOKENS:
                results[block[0]].sparse = self._splade_long(
                    flat[int(bounds[block[0]]) : int(bounds[block[0] + 1])]
                )
            else:
                hidden = torch.cat([flat[int(bounds[i]) : int(bounds[i + 1])] for i in block])
                scores = self._splade_scores(hidden)
                for i, part in zip(block, torch.split(scores, [lengths[i] for i in block]), strict=True):
                    results[i].sparse = _nonzero(self._pool(part))
            k = stop

    def _splade_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.mlm_head is not None
        # in place: [tokens, vocabulary] is the biggest tensor of the request, made once
        scores = self.mlm_head(hidden).float().relu_().log1p_()
        return scores.log1p_() if self.splade_activation == "log1p_relu" else scores

    def _pool(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.amax(dim=0) if self.splade_pooling == "max" else scores.sum(dim=0)

    def _splade_long(self, hidden: torch.Tensor) -> SparseVector:
        pooled: torch.Tensor | None = None
        for start in range(0, hidden.shape[0], SPLADE_BLOCK_TOKENS):
            part = self._pool(self._splade_scores(hidden[start : start + SPLADE_BLOCK_TOKENS]))
            if pooled is None:
                pooled = part
            else:
                pooled = torch.maximum(pooled, part) if self.splade_pooling == "max" else pooled + part
        assert pooled is not None
        return _nonzero(pooled)

    def _multi_vectors(
        self,
        flat: torch.Tensor,
        seqs: Sequence[EncodedInput],
        bounds: np.ndarray,
        rows: list[int],
        results: list[TokenOutputs],
    ) -> None:
        picked = []
        counts = []
        for i in rows:
            seq = seqs[i]
            start = int(bounds[i])
            if self.kind == BGE_M3:  # every token but CLS
                index = np.arange(start + 1, int(bounds[i + 1]))
            elif seq.query:  # ColBERT queries: every token, the [MASK] expansion included
                index = np.arange(start, int(bounds[i + 1]))
            else:  # ColBERT documents: the skiplist's tokens dropped
                assert self.colbert is not None
                ids = np.asarray(seq.ids, dtype=np.int64)
                index = start + np.flatnonzero(~np.isin(ids, self.colbert.skip_ids))
            picked.append(index)
            counts.append(len(index))
        index_t = torch.from_numpy(np.concatenate(picked)).to(flat.device)
        vectors = F.normalize(self.projection(flat[index_t]), dim=-1).cpu()
        for i, part in zip(rows, torch.split(vectors, counts), strict=True):
            results[i].multi_vector = part


def _nonzero(pooled: torch.Tensor) -> SparseVector:
    ids = torch.nonzero(pooled > 0).squeeze(-1)
    return ids.cpu().numpy().astype(np.int32), pooled[ids].cpu().numpy().astype(np.float32)


def with_extra_outputs(encoded: list[EncodedInput], extra: tuple[str, ...]) -> list[EncodedInput]:
    """The sequences marked with the extra outputs their request asks for."""
    if not extra:
        return encoded
    return [dataclasses.replace(e, extra_outputs=extra) for e in encoded]
