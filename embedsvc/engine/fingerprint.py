"""A served model's fingerprint: a short, stable hash of everything that decides its vectors.

Two vectors are comparable when their fingerprints match. The fingerprint covers:

* the checkpoint's content: weight files (sentence-transformers Dense layers and a merged PEFT adapter's
  base included), tokenizer files, and config.json (less the keys a re-save rewrites);
* the resolved recipe: every setting that changes outputs (pooling, prompts and templates, special
  tokens, attention, max length, normalization, conversion, ...) and the engine's numerics (dtype,
  device type, quantization, deterministic mode, attention backend, batching);
* the versions of the libraries that compute it (torch, transformers; onnxruntime when int8).

Weight files are hashed once (sha256, 8 MiB blocks: SHA-NI makes it the fastest hashlib choice here);
the digests are kept in a small JSON file under the embedsvc cache folder (``EMBEDSVC_CACHE``, default
``~/.cache/embedsvc``), so a restart does not rehash gigabytes. An entry is trusted only while the file's
path, size, mtime, inode and ctime are all as they were when it was hashed: mtime alone can be set back
(``os.utime``, ``cp -p``, ``rsync -t``, tar) after a same-size rewrite, ctime cannot (the kernel sets it on
every write, rename or utime), and a file replaced by another may reuse the inode number but not the ctime.
A file changed within ``RACY_NS`` before it was hashed is not trusted later (its ctime could be shared
by a second write in the same timestamp tick: git's "racy clean" problem); a copy (another machine, a
restored backup) has a new inode and ctime, so it is hashed once more. A cache folder that cannot be
written only costs the rehash: serving never fails for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedsvc.engine.embedder import Embedder
    from embedsvc.engine.scorer import Scorer
    from embedsvc.models.loading import LoadedModel

log = logging.getLogger("embedsvc.engine")

DIGEST_CHARS = 16
BLOCK_BYTES = 8 * 1024 * 1024
HASH_CACHE_FILE = "weight-hashes.json"
# a file changed this close before its hashing began is hashed again next time: two writes within one
# timestamp tick (coarse kernel clocks: ms; FAT: 2 s) can leave the same ctime
RACY_NS = 2_000_000_000
# what must be as it was for a cached digest to stand (path is the key)
_STAT_KEYS = ("size", "mtime_ns", "ino", "ctime_ns")
# transformers reads safetensors when a folder has them, else the pickled formats
WEIGHT_SUFFIXES = ((".safetensors",), (".bin", ".pt", ".pth"))
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# config.json keys a re-save rewrites without changing a single output
_CONFIG_NOISE = ("transformers_version", "torch_dtype", "dtype", "architectures", "auto_map")
# parts compared by content: a change is reported as "<part> changed", not as two hashes
CONTENT_PARTS = ("weights", "tokenizer", "config")
# recipe settings (ModelSettings fields) that change what a text becomes
RECIPE_SETTINGS = (
    "pooling",
    "normalize",
    "max_length",
    "conversion",
    "attention",
    "prompts",
    "default_prompt_name",
    "query_prompt_name",
    "document_prompt_name",
    "instruction_template",
    "default_instruction",
    "append_eos",
    "prepend_bos",
    "include_prompt",
    "prompt_token_skip",
    "rstrip_input",
    "examples",
)


@dataclass(frozen=True)
class Fingerprint:
    """``digest``: 16 lowercase hex characters over ``parts`` (name -> value, all strings)."""

    digest: str
    parts: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, parts: Mapping[str, str]) -> Fingerprint:
        canonical = json.dumps(dict(parts), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:DIGEST_CHARS]
        return cls(digest, dict(sorted(parts.items())))

    def differences(self, other_parts: Mapping[str, str]) -> list[str]:
        """What changed from ``other_parts`` (e.g. a stored fingerprint's) to this one, in words:
        "weights changed", "max_length: 512 -> 256"; empty when they agree."""
        out = []
        for name in sorted(set(self.parts) | set(other_parts)):
            old, new = other_parts.get(name), self.parts.get(name)
            if old == new:
                continue
            if name in CONTENT_PARTS and old is not None and new is not None:
                out.append(f"{name} changed")
            else:
                out.append(f"{name}: {_shown(old)} -> {_shown(new)}")
        return out


def _shown(value: str | None) -> str:
    return "(unset)" if value is None else value


def part_value(value: Any) -> str:
    """A setting as one stable string: plain for str/bool/int, canonical JSON otherwise."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


# ------------------------------------------------------------------------------------------ files


def cache_dir() -> Path:
    from embedsvc.engine.onnx_int8 import cache_root  # the one embedsvc cache folder

    return cache_root()


class HashCache:
    """sha256 digests of files by path, trusted while (size, mtime_ns, ino, ctime_ns) stay as they were
    when hashed; kept in a JSON file between runs.

    ``hashed`` lists the files actually read in this instance's life (what a cache hit avoids);
    ``racy_ns``: see ``RACY_NS``."""

    def __init__(self, path: Path | None = None, *, racy_ns: int = RACY_NS) -> None:
        self.path = path if path is not None else cache_dir() / HASH_CACHE_FILE
        self.racy_ns = racy_ns
        self.entries: dict[str, dict[str, Any]] = self._read()
        self.hashed: list[Path] = []
        self._dirty = False

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def digest(self, path: Path) -> str:
        path = path.resolve()
        seen = _identity(path.stat())
        entry = self.entries.get(str(path))
        if (
            isinstance(entry, dict)
            and all(entry.get(key) == seen[key] for key in _STAT_KEYS)
            and isinstance(entry.get("sha256"), str)
        ):
            return str(entry["sha256"])
        started = time.time_ns()
        value = hash_file(path)
        self.hashed.append(path)
        after = _identity(path.stat())
        # kept only for a file that held still while read and was last changed well before: else the
        # next run hashes it again (a rewrite within the same ctime tick would look unchanged)
        if after == seen and seen["ctime_ns"] < started - self.racy_ns:
            self.entries[str(path)] = {**seen, "sha256": value}
        else:
            self.entries.pop(str(path), None)
        self._dirty = True
        return value

    def save(self) -> None:
        """Write the entries back (files gone since are dropped); a folder we cannot write is skipped."""
        if not self._dirty:
            return
        kept = {p: e for p, e in self.entries.items() if os.path.exists(p)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".weight-hashes-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(kept, handle, indent=0, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.debug("weight hash cache %s not written (%s): files are rehashed next start", self.path, exc)
            return
        self._dirty = False


def _identity(stat: os.stat_result) -> dict[str, int]:
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ino": stat.st_ino,
        "ctime_ns": stat.st_ctime_ns,
    }


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while read := handle.readinto(buffer):
            digest.update(view[:read])
    return digest.hexdigest()


def weight_files(root: Path) -> list[Path]:
    """The weight files a checkpoint folder's model is built from: the transformer's and every
    sentence-transformers module's (Dense) listed in modules.json; safetensors over pickles."""
    folders = [root]
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        folders = [root / str(m.get("path", "")) for m in modules if isinstance(m, dict)] or [root]
    except (OSError, ValueError, AttributeError):
        pass
    found: list[Path] = []
    for folder in dict.fromkeys(folders):
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file())
        for suffixes in WEIGHT_SUFFIXES:
            chosen = [p for p in files if p.name.endswith(suffixes)]
            if chosen:
                found += chosen
                break
    return found


def content_digest(files: Iterable[tuple[str, str]]) -> str:
    """One digest over (name, file digest) pairs, independent of their order."""
    digest = hashlib.sha256()
    for name, value in sorted(files):
        digest.update(f"{name}\0{value}\n".encode())
    return digest.hexdigest()[:32]


def _tokenizer_digest(folder: Path) -> str:
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    return content_digest((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files)


def _config_digest(config_json: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in config_json.items() if not k.startswith("_") and k not in _CONFIG_NOISE}
    return hashlib.sha256(part_value(kept).encode("utf-8")).hexdigest()[:32]


def checkpoint_parts(loaded: LoadedModel, cache: HashCache) -> dict[str, str]:
    """The "weights", "tokenizer" and "config" parts: digests of the files the model came from."""
    root = loaded.source.folder
    folder = loaded.st.transformer_dir if loaded.st else root
    weights = [(f"{p.relative_to(root).as_posix()}", cache.digest(p)) for p in weight_files(root)]
    # a PEFT adapter merged into its base (in turn): every set of weights decides the vectors
    for level, base in enumerate(reversed(loaded.base_sources), 1):
        weights += [
            (f"base{level}/{p.relative_to(base.folder).as_posix()}", cache.digest(p))
            for p in weight_files(base.folder)
        ]
    if not weights:  # loaded from files this does not know: say so rather than refuse to serve
        log.warning("no weight files (*.safetensors, *.bin) in %s: the fingerprint cannot cover them", root)
    return {
        "weights": content_digest(weights) if weights else "unknown",
        "tokenizer": _tokenizer_digest(folder if (folder / "tokenizer.json").exists() else root),
        "config": _config_digest(loaded.config_json),
    }


def library_versions(quantized: bool) -> dict[str, str]:
    import torch
    import transformers

    versions = {"torch": str(torch.__version__), "transformers": str(transformers.__version__)}
    if quantized:
        import onnxruntime

        versions["onnxruntime"] = str(onnxruntime.__version__)
    return versions


# computed once per loaded embedder: the server computes it off the event loop right after loading
_KNOWN: weakref.WeakKeyDictionary[Embedder, Fingerprint] = weakref.WeakKeyDictionary()
# the parts of a scorer's recipe (Scorer.describe) that change a score; where each came from does not
SCORING_PARTS = (
    "task",
    "family",
    "head",
    "activation",
    "max_length",
    "lm_head_token_ids",
    "labels",
    "prompt",
    "default_instruction",
)


def served_fingerprint(model: Embedder | Scorer) -> Fingerprint:
    """The fingerprint of a served model, embedder or scorer: what every answer carries."""
    from embedsvc.engine.scorer import Scorer

    return scorer_fingerprint(model) if isinstance(model, Scorer) else fingerprint_of(model)


def scorer_fingerprint(scorer: Scorer) -> Fingerprint:
    """A reranker's or classifier's fingerprint: its trunk's (weights, tokenizer, config, numerics)
    and its scoring recipe as ``scoring_*`` parts (activation, prompt template, LM-head token ids, ...),
    so a changed activation changes the digest even where the checkpoint's files that say it do not."""
    trunk = fingerprint_of(scorer.trunk)
    recipe = scorer.describe()
    parts = dict(trunk.parts)
    parts.update({f"scoring_{name}": part_value(recipe[name]) for name in SCORING_PARTS if name in recipe})
    return Fingerprint.of(parts)


def fingerprint_of(embedder: Embedder, cache: HashCache | None = None) -> Fingerprint:
    """The fingerprint of a loaded embedder (weights hashed unless the cache knows them); computed once
    per embedder unless a ``cache`` is passed."""
    if cache is None:
        known = _KNOWN.get(embedder)
        if known is None:
            known = _KNOWN[embedder] = fingerprint_of(embedder, HashCache())
        return known
    parts = checkpoint_parts(embedder.loaded, cache)
    cache.save()
    s = embedder.settings
    # unset settings are left out: a setting added later leaves the digests of models without it alone
    parts.update(
        {name: part_value(getattr(s, name)) for name in RECIPE_SETTINGS if getattr(s, name) is not None}
    )
    options = embedder.options
    parts.update(
        dimension=str(embedder.dimension),
        dtype=str(embedder.dtype).removeprefix("torch."),
        device=embedder.device.type,
        quantize=options.quantize,
        deterministic=part_value(options.deterministic),
        attention_backend=options.attention_backend,
        batching="packed" if options.packed else "padded",
        remote_code=part_value(embedder.loaded.remote_code),
    )
    if options.deterministic:
        parts["deterministic_tile_rows"] = str(options.tile_rows)
    info = getattr(embedder.model, "info", None)
    if info is not None and hasattr(info, "reduce_range"):  # 7-bit activations on CPUs without VNNI
        parts["int8_activations"] = "7-bit" if info.reduce_range else "8-bit"
    parts.update(library_versions(options.quantize != "none"))
    return Fingerprint.of(parts)
