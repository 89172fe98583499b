"""The checkpoint file: how far each input file has been indexed, the running totals, and the reader
settings that make a file position mean the same documents on a rerun.

Written atomically (temporary file, fsync, rename) after each batch the destination acknowledged, so
a crash loses at most the batches in flight, which a rerun sends again and which replace themselves.
The rejects file lives beside it: one pair per index and destination, never shared through the cwd.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from embedsvc.errors import FailedPreconditionError
from embedsvc.pipeline.batching import Batch
from embedsvc.pipeline.options import BuildOptions
from embedsvc.pipeline.sinks import PipelineStopped

log = logging.getLogger("embedsvc.pipeline")

__all__ = ["Checkpoint", "SettingsChangedError", "default_paths", "index_settings", "reader_settings"]


class SettingsChangedError(FailedPreconditionError):
    """A rerun reads the files differently from the run whose checkpoint it would continue."""


def reader_settings(options: BuildOptions) -> dict[str, Any]:
    """What decides which documents, ids and chunks a file position stands for: a checkpoint only
    counts file positions, so a rerun must read the files the same way."""
    reader = options.reader
    return {
        "format": reader.format,
        "text_field": reader.text_field,
        "id_field": reader.id_field,
        "metadata_fields": list(reader.metadata_fields),
        "chunk_tokens": options.chunk_tokens,
        "chunk_overlap": options.chunk_overlap,
    }


def index_settings(options: BuildOptions) -> dict[str, Any]:
    """What the build's index keeps (and a store sink writes): a resumed build must keep writing the same."""
    return {"store_text": options.store_text, "sparse": options.sparse, "multi_vector": options.multi_vector}


_INDEX_FLAGS = {"store_text": "--store-text", "sparse": "--sparse", "multi_vector": "--multi-vector"}

_SETTING_FLAGS = {
    "format": "--format",
    "text_field": "--text-field",
    "id_field": "--id-field",
    "metadata_fields": "--metadata-fields",
    "chunk_tokens": "--chunk-tokens",
    "chunk_overlap": "--chunk-overlap",
}


class Checkpoint:
    def __init__(self, path: Path, index: str, settings: dict[str, Any]) -> None:
        self.path = path
        self.index = index
        self.settings = settings
        self.files: dict[str, int] = {}
        self.totals = {"documents": 0, "chunks": 0, "tokens": 0, "rejected": 0, "truncated": 0}
        self.model: dict[str, Any] | None = None  # {"fingerprint", "parts"} of the model that embedded
        self.index_settings: dict[str, Any] | None = None  # index_settings() of the run that wrote it

    def load(self) -> None:
        if not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        if data.get("index") != self.index:
            raise PipelineStopped(
                f"checkpoint {self.path} belongs to index {data.get('index')!r}; use --restart"
            )
        saved = data.get("settings")
        if saved is None and self.settings["id_field"] is None:
            log.warning(
                "checkpoint %s is from an embedsvc before 0.2, which kept no reader settings and gave "
                "FILE:RECORD ids unless --id-field was given; records with an 'id' field now get that id. "
                "If the files have one, add --restart to rebuild with one kind of id",
                self.path,
            )
        if saved is not None and saved != self.settings:
            changed = [
                f"{_SETTING_FLAGS[k]} {_shown(saved.get(k))} -> {_shown(self.settings[k])}"
                for k in self.settings
                if saved.get(k) != self.settings[k]
            ]
            raise SettingsChangedError(
                f"checkpoint {self.path} was written by a run that read the files differently "
                f"({'; '.join(changed)}): rerun with the earlier settings to continue it, or add --restart "
                "to rebuild the index with the new ones"
            )
        self.files, self.totals = data["files"], {"truncated": 0, **data["totals"]}  # older: no truncated
        self.model = data.get("model")  # older: none recorded
        self.index_settings = data.get("index_settings")  # older: none recorded

    def keep_index_settings(self, options: BuildOptions) -> BuildOptions:
        """The options a resumed build runs with: a rerun that names none of --store-text, --sparse,
        --multi-vector continues with the ones the checkpoint recorded; one that names others stops
        (the items already written keep the earlier ones)."""
        given, saved = index_settings(options), self.index_settings
        if saved is not None and self.files and given != saved:
            if given == index_settings(BuildOptions(index=options.index)):
                log.info("continuing with the checkpoint's index settings %s", saved)
                options = dataclasses.replace(options, **saved)
            else:
                changed = [
                    f"{_INDEX_FLAGS[k]} {_kept(saved.get(k))} -> {_kept(given[k])}"
                    for k in given
                    if saved.get(k) != given[k]
                ]
                raise SettingsChangedError(
                    f"checkpoint {self.path} was written by a build that kept other parts of each chunk "
                    f"({'; '.join(changed)}): rerun with the earlier flags (or none of them) to continue it, "
                    "or add --restart to rebuild the index with the new ones"
                )
        self.index_settings = index_settings(options)
        return options

    def check_model(self, fingerprint: tuple[str, dict[str, str]] | None) -> None:
        """Record the model fingerprint of this build; resuming with a changed model stops, saying what
        changed (its vectors would not be comparable with the ones already written)."""
        if fingerprint is None:
            return
        digest, parts = fingerprint
        saved = self.model
        if saved is not None and saved.get("fingerprint") != digest and self.files:
            from embedsvc.engine.fingerprint import Fingerprint

            changed = Fingerprint(digest, parts).differences(saved.get("parts") or {})
            raise SettingsChangedError(
                f"checkpoint {self.path} was written by a build whose model had fingerprint "
                f"{saved.get('fingerprint')}; the model now has {digest} "
                f"({'; '.join(changed) or 'changed'}): rerun with the earlier model to continue, or add "
                "--restart to rebuild the index with this one"
            )
        self.model = {"fingerprint": digest, "parts": dict(parts)}

    def record(self, batch: Batch) -> None:
        """A batch the destination stored: the file position it reached and its counts, saved."""
        self.files[batch.source] = batch.next_position
        for key, value in (
            ("documents", batch.documents),
            ("chunks", len(batch.ids)),
            ("tokens", batch.tokens),
            ("rejected", len(batch.rejects)),
            ("truncated", batch.truncated),
        ):
            self.totals[key] += value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as handle:
            json.dump(
                {
                    "version": 2,
                    "index": self.index,
                    "settings": self.settings,
                    "files": self.files,
                    "totals": self.totals,
                    "model": self.model,
                    "index_settings": self.index_settings,
                },
                handle,
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def _shown(value: Any) -> str:
    if value is None:
        return "(default)"
    return ",".join(value) if isinstance(value, list) else str(value)


def _kept(value: Any) -> str:
    """An index flag as a rerun would spell it: off, on, the model's width, or a width."""
    if value is None or value is False:
        return "off"
    return "on" if value is True else "(the model's)" if value == 0 else str(value)


def default_paths(options: BuildOptions) -> tuple[Path, Path]:
    """(checkpoint, rejects) files: the ones the options name, else under the index directory, else
    under ``.embedsvc/`` keyed by the destination."""
    if options.data_dir:
        base = Path(options.data_dir) / "pipeline"
    else:
        where = f"{options.store}:{options.store_url}" if options.store else options.target or ""
        key = hashlib.sha1(where.encode()).hexdigest()[:8]
        base = Path(".embedsvc") / f"{options.index}-{key}"
    checkpoint = Path(options.checkpoint) if options.checkpoint else base / f"{options.index}.checkpoint.json"
    # beside the checkpoint: one rejects file per index and destination, never shared through the cwd
    rejects = (
        Path(options.rejects) if options.rejects else checkpoint.parent / f"{options.index}.rejects.jsonl"
    )
    return checkpoint, rejects
