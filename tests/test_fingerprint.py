"""Model fingerprints: stable for the same files and recipe, different when anything that decides a
vector changes, with weight digests cached by path + size + mtime + inode + ctime."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from time import time_ns

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedsvc import EmbedClient, Embedder
from embedsvc.engine import fingerprint as fingerprint_module
from embedsvc.engine.fingerprint import (
    RACY_NS,
    Fingerprint,
    HashCache,
    checkpoint_parts,
    fingerprint_of,
    weight_files,
)
from embedsvc.engine.service import ModelService
from tests import families, tiny_models
from tests.server_utils import ServerProcess, free_port


@pytest.fixture(scope="module", autouse=True)
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The weight-hash cache in a folder of this module's own."""
    folder = tmp_path_factory.mktemp("embedsvc-cache")
    previous = os.environ.get("EMBEDSVC_CACHE")
    os.environ["EMBEDSVC_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("EMBEDSVC_CACHE", None)
    else:
        os.environ["EMBEDSVC_CACHE"] = previous


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers BERT with a Dense layer."""
    return tiny_models.build_bert(tmp_path_factory.mktemp("fp") / "encoder-a", st="mean", dense=True, seed=11)


@pytest.fixture(scope="module")
def base(checkpoint: Path) -> Fingerprint:
    return fingerprint_of(Embedder.from_pretrained(checkpoint, device="cpu"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_is_sixteen_hex_over_parts(base: Fingerprint) -> None:
    assert len(base.digest) == 16 and all(c in "0123456789abcdef" for c in base.digest)
    # written out independently: sha256 of the parts as sorted compact JSON
    canonical = json.dumps(dict(base.parts), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert base.digest == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    for name in ("weights", "tokenizer", "config", "pooling", "max_length", "normalize", "prompts", "torch"):
        assert name in base.parts
    assert base.parts["pooling"] == "mean" and base.parts["max_length"] == "64"
    assert base.parts["dimension"] == "16"  # the Dense layer's width
    assert all(isinstance(v, str) for v in base.parts.values())


def test_weight_files_cover_the_dense_layer(checkpoint: Path) -> None:
    names = [p.relative_to(checkpoint).as_posix() for p in weight_files(checkpoint)]
    assert names == ["model.safetensors", "2_Dense/model.safetensors"]


@pytest.mark.slow
def test_every_door_carries_the_fingerprint(checkpoint: Path, base: Fingerprint, tmp_path: Path) -> None:
    """One server process (another process than this one's digest): gRPC, HTTP, metrics of the cache."""
    metrics_port = free_port()
    with (
        ServerProcess(
            "--model",
            f"enc={checkpoint}",
            "--device",
            "cpu",
            "--cache-mb",
            "4",
            "--metrics-port",
            str(metrics_port),
            log_path=tmp_path / "server.log",
        ) as server,
        EmbedClient(server.target) as client,
    ):
        assert client.last_fingerprint == ""
        vectors = client.embed(["one text", "another text"])
        assert client.last_fingerprint == base.digest  # same files, same recipe: same digest elsewhere
        (info,) = client.list_models()
        assert info.fingerprint == base.digest and info.fingerprint_parts == dict(base.parts)
        again = client.embed(["another text"])
        assert again.tobytes() == vectors[1:].tobytes()  # a cache hit: the first computation
        url = server.http_url()
        openai = httpx.post(f"{url}/v1/embeddings", json={"input": ["one text"], "model": "enc"})
        assert openai.status_code == 200, openai.text
        assert openai.headers["x-embedsvc-fingerprint"] == openai.json()["fingerprint"] == base.digest
        tei = httpx.post(f"{url}/embed", json={"inputs": "one text"})
        assert tei.status_code == 200 and tei.headers["x-embedsvc-fingerprint"] == base.digest
        (model,) = httpx.get(f"{url}/v1/models").json()["data"]
        assert model["fingerprint"] == base.digest
        described = httpx.get(f"{url}/info").json()
        assert described["fingerprint"] == base.digest and described["fingerprint_parts"] == dict(base.parts)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        counts = {
            s.name: s.value
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
            if s.name.startswith("embedsvc_cache")
        }
        # gRPC: 2 misses, then 1 hit; OpenAI: a hit; TEI: a miss (its truncation defaults to "none")
        assert counts["embedsvc_cache_hits_total"] == 2 and counts["embedsvc_cache_misses_total"] == 3
        assert counts["embedsvc_cache_entries"] == 3 and counts["embedsvc_cache_bytes"] > 0
    assert '"fingerprint": "' + base.digest in server.log()  # the "model loaded" line


def test_facts_carry_the_fingerprint(checkpoint: Path, base: Fingerprint) -> None:
    service = ModelService.in_process(Embedder.from_pretrained(checkpoint, device="cpu"))
    assert service.fingerprint == base
    assert service.facts.fingerprint == base.digest
    assert service.facts.fingerprint_parts == dict(base.parts)


@pytest.mark.parametrize(
    ("options", "changed"),
    [
        ({"max_length": 32}, ["max_length: 64 -> 32"]),
        ({"pooling": "cls"}, ["pooling: mean -> cls"]),
        ({"normalize": False}, ["normalize: true -> false"]),
        ({"prompts": {"query": "q: ", "document": "passage: "}}, ["prompts"]),
        ({"quantize": "int8"}, ["batching: packed -> padded", "quantize: none -> int8"]),
        ({"deterministic": True}, ["attention_backend", "deterministic: false -> true"]),
    ],
)
def test_recipe_changes_change_the_digest(
    checkpoint: Path, base: Fingerprint, options: dict, changed: list[str]
) -> None:
    if options.get("quantize"):
        pytest.importorskip("onnxruntime")
    other = fingerprint_of(Embedder.from_pretrained(checkpoint, device="cpu", **options))
    assert other.digest != base.digest
    found = other.differences(base.parts)
    for expected in changed:
        assert any(line.startswith(expected) for line in found), (expected, found)


def test_weight_byte_change_changes_the_digest(checkpoint: Path, base: Fingerprint, tmp_path: Path) -> None:
    copy = shutil.copytree(checkpoint, tmp_path / "encoder-a")
    assert fingerprint_of(Embedder.from_pretrained(copy, device="cpu")).digest == base.digest
    dense = copy / "2_Dense" / "model.safetensors"
    data = bytearray(dense.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: the file still loads, one weight differs
    dense.write_bytes(bytes(data))
    os.utime(dense, ns=(dense.stat().st_atime_ns, dense.stat().st_mtime_ns + 1_000_000))
    changed = fingerprint_of(Embedder.from_pretrained(copy, device="cpu"))
    assert changed.digest != base.digest
    assert changed.differences(base.parts) == ["weights changed"]
    assert base.differences(base.parts) == []


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the weight hasher reads, in order (the real hash_file does the reading)."""
    seen: list[Path] = []
    real = fingerprint_module.hash_file

    def counting(path: Path) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(fingerprint_module, "hash_file", counting)
    return seen


def test_hash_cache_hit_avoids_rehash(checkpoint: Path, tmp_path: Path, reads: list[Path]) -> None:
    store = tmp_path / "hashes.json"
    files = weight_files(checkpoint)
    first = HashCache(store, racy_ns=0)  # the checkpoint was written just now: see the racy test below
    digests = [first.digest(p) for p in files]
    assert digests == [_sha256(p) for p in files]
    assert first.hashed == reads == [p.resolve() for p in files]
    first.save()
    second = HashCache(store, racy_ns=0)  # as after a restart: read back from the file
    assert [second.digest(p) for p in files] == digests
    assert second.hashed == [] and len(reads) == len(files)
    # a new mtime (same size) is a miss: the file is read again
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 1))
    third = HashCache(store, racy_ns=0)
    assert third.digest(files[0]) == digests[0] and third.hashed == [files[0].resolve()]


def test_untouched_model_is_not_rehashed_after_a_restart(tmp_path: Path, reads: list[Path]) -> None:
    """The bundled model's files were written when the package was installed, long before: with the
    default racy window, the second run (a new cache read back from its file) reads none of them."""
    from embedsvc.models.loading import resolve_source

    folder = resolve_source(None).folder
    files = weight_files(folder)
    assert files and all(p.stat().st_ctime_ns < time_ns() - RACY_NS for p in files)
    store = tmp_path / "hashes.json"
    first = HashCache(store)
    digests = [first.digest(p) for p in files]
    first.save()
    assert reads == [p.resolve() for p in files]
    second = HashCache(store)
    assert [second.digest(p) for p in files] == digests == [_sha256(p) for p in files]
    assert len(reads) == len(files)  # nothing read again


@pytest.mark.parametrize("how", ["in place", "replaced"])
def test_same_size_rewrite_with_old_mtime_restored_is_rehashed(
    checkpoint: Path, tmp_path: Path, how: str
) -> None:
    """One weight byte changed, same size, its mtime set back (os.utime, as cp -p / rsync -t / tar do):
    the cached digest must not stand, so the served fingerprint changes."""
    copy = shutil.copytree(checkpoint, tmp_path / "encoder-a")
    store = tmp_path / "hashes.json"
    before = fingerprint_of(Embedder.from_pretrained(copy, device="cpu"), HashCache(store, racy_ns=0))
    weights = (copy / "model.safetensors").resolve()
    old = weights.stat()
    assert json.loads(store.read_text())[str(weights)]["mtime_ns"] == old.st_mtime_ns  # it was cached
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: the file still loads, one weight differs
    if how == "in place":
        with open(weights, "r+b") as handle:
            handle.write(bytes(data))
    else:  # a new file renamed over the old one (a fresh inode, or the old number reused)
        fresh = weights.with_name("model.safetensors.tmp")
        fresh.write_bytes(bytes(data))
        os.replace(fresh, weights)
    os.utime(weights, ns=(old.st_atime_ns, old.st_mtime_ns))
    now = weights.stat()
    assert (now.st_size, now.st_mtime_ns) == (old.st_size, old.st_mtime_ns)  # what size + mtime saw
    cache = HashCache(store, racy_ns=0)  # a restart
    after = fingerprint_of(Embedder.from_pretrained(copy, device="cpu"), cache)
    assert weights in cache.hashed
    assert after.digest != before.digest and after.differences(before.parts) == ["weights changed"]
    assert after.parts["weights"] != before.parts["weights"]


def test_a_file_changed_just_before_hashing_is_hashed_again(checkpoint: Path, tmp_path: Path) -> None:
    """Racy clean: a file whose ctime is within the window of its hashing may be rewritten in the same
    timestamp tick, so its digest is not trusted by the next run."""
    copy = shutil.copytree(checkpoint, tmp_path / "encoder-a")  # written just now
    weights = (copy / "model.safetensors").resolve()
    store = tmp_path / "hashes.json"
    first = HashCache(store)
    digest = first.digest(weights)
    first.save()
    assert str(weights) not in json.loads(store.read_text())
    second = HashCache(store)
    assert second.digest(weights) == digest and second.hashed == [weights]


def test_unwritable_cache_folder_only_costs_a_rehash(checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = HashCache(blocker / "hashes.json")  # its parent is a file: nothing can be written there
    digest = cache.digest(weight_files(checkpoint)[0])
    cache.save()  # logged, not raised
    assert digest == _sha256(weight_files(checkpoint)[0])
    assert not (blocker / "hashes.json").exists()


def test_differences_name_what_changed() -> None:
    old = Fingerprint.of({"weights": "a", "max_length": "512", "pooling": "mean"})
    new = Fingerprint.of({"weights": "b", "max_length": "256", "pooling": "mean", "prompts": "{}"})
    assert new.differences(old.parts) == [
        "max_length: 512 -> 256",
        "prompts: (unset) -> {}",
        "weights changed",
    ]
    assert Fingerprint.of(dict(reversed(list(old.parts.items())))).digest == old.digest


def test_inspect_shows_the_fingerprint(
    checkpoint: Path, base: Fingerprint, capsys: pytest.CaptureFixture
) -> None:
    from embedsvc.cli.main import main

    assert main(["inspect", str(checkpoint)]) == 0
    assert f"fingerprint {base.digest}" in capsys.readouterr().out
    assert main(["inspect", str(checkpoint), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fingerprint"] == base.digest and data["fingerprint_parts"] == dict(base.parts)


def test_merged_adapters_count_every_base(tmp_path: Path) -> None:
    """LLM2Vec: a supervised adapter on an MNTP adapter on a base decoder; all three sets of weights."""
    pytest.importorskip("peft")
    from embedsvc.models.loading import load_model

    base_dir, mntp_dir = tmp_path / "base", tmp_path / "mntp"
    supervised = families.build_llm2vec_layout(base_dir, mntp_dir, tmp_path / "supervised")
    loaded = load_model(supervised, device="cpu", dtype=None, attn_implementation="sdpa")
    assert [s.folder for s in loaded.base_sources] == [base_dir.resolve(), mntp_dir.resolve()]
    cache = HashCache(tmp_path / "hashes.json")
    with_bases = checkpoint_parts(loaded, cache)["weights"]
    adapter_only = checkpoint_parts(dataclasses.replace(loaded, base_sources=()), cache)["weights"]
    only_mntp = checkpoint_parts(dataclasses.replace(loaded, base_sources=loaded.base_sources[1:]), cache)
    assert len({with_bases, adapter_only, only_mntp["weights"]}) == 3
    assert {p.parent for p in cache.hashed} == {base_dir.resolve(), mntp_dir.resolve(), supervised.resolve()}


def test_a_rerankers_fingerprint_covers_its_scoring_recipe(tmp_path: Path) -> None:
    """The trunk's parts and the scoring recipe's: a cross-encoder whose files name another activation
    (weights, tokenizer and config.json unchanged) has another fingerprint, and the difference says so."""
    from embedsvc.engine.fingerprint import served_fingerprint
    from embedsvc.engine.scorer import Scorer, load_served

    folder = tiny_models.build_bert_cross_encoder(tmp_path / "cross", layout="st")
    scorer = load_served(folder, device="cpu")
    assert isinstance(scorer, Scorer)
    sigmoid = served_fingerprint(scorer)
    trunk = fingerprint_of(scorer.trunk)
    assert {k: v for k, v in sigmoid.parts.items() if not k.startswith("scoring_")} == trunk.parts
    assert sigmoid.parts["scoring_activation"] == "sigmoid" and sigmoid.parts["scoring_task"] == "rerank"
    assert sigmoid.digest != trunk.digest

    st_config = folder / "config_sentence_transformers.json"
    data = json.loads(st_config.read_text())
    assert "Sigmoid" in data["activation_fn"]  # what sentence-transformers saved
    data["activation_fn"] = "torch.nn.modules.linear.Identity"
    st_config.write_text(json.dumps(data))
    identity = served_fingerprint(load_served(folder, device="cpu"))
    assert identity.digest != sigmoid.digest
    assert identity.differences(sigmoid.parts) == ["scoring_activation: sigmoid -> identity"]
