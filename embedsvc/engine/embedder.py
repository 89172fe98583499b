"""Embedder: the one hot path from texts to float32 vectors."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedsvc.engine import attention
from embedsvc.engine.batching import plan_batches
from embedsvc.engine.cpu_parallel import ForwardWorkers, forward_workers, split_for_workers
from embedsvc.engine.deterministic import DEFAULT_TILE_ROWS, FixedTileLinear, make_batch_invariant
from embedsvc.engine.inputs import (
    TRIM_AFTER_TOKENS,
    TRUNCATIONS,
    EncodedInput,
    InputEncoder,
    Template,
    trim_heap,
)
from embedsvc.engine.onnx_int8 import load_int8
from embedsvc.engine.options import EmbedOptions, ResolvedOptions
from embedsvc.engine.outputs import OUTPUT_KINDS, Forwarded, OutputHeads, TokenOutputs, with_extra_outputs
from embedsvc.engine.pooling import finalize, pool_packed, pool_padded, sqrt_len_scale
from embedsvc.engine.recipe import Recipe, describe_recipe
from embedsvc.engine.threads import apply_threads, check_parallelism, resolve_threads
from embedsvc.errors import InvalidInputError
from embedsvc.models.dtypes import DTYPE_ALIASES
from embedsvc.models.loading import LoadedModel, load_model
from embedsvc.models.profiles import CONVERSION_TEMPLATES, ICL_EXAMPLE_TEMPLATE, select_profile
from embedsvc.models.settings import SETTING_OPTIONS, ModelSettings, resolve_settings
from embedsvc.models.st_files import DenseLayer
from embedsvc.models.tasks import TASKS
from embedsvc.models.tokens import TokenizerFacts, probe_tokenizer

INPUT_TYPES = ("query", "document")
BATCHING_MODES = ("auto", "packed", "padded")
_ENGINE_OPTIONS = (
    "profile",
    "name",
    "token_budget",
    "max_batch_size",
    "batching",
    "attention_backend",
    "deterministic",
    "deterministic_tile_rows",
    "quantize",
    "trust_remote_code",
    "base_model",
    "threads",
    "task",
    "cpu_parallelism",
)


# tokens per forward pass: big batches feed a GPU; on CPU smaller ones stay in cache (measured faster)
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 16384}
# embed(): texts per slice when the next slice is tokenized while the current one runs
OVERLAP_TEXTS = 512
# ONNX Runtime's int8 kernels: padded batches of 1024 tokens ran 20 % faster than 4096 (2 000 texts)
INT8_TOKEN_BUDGET = 1024
# int8: the linear layers through ONNX Runtime (engine/onnx_int8.py)
QUANTIZATIONS = ("none", "int8")
_REMOVED_QUANTIZATIONS = {
    "int8-fast": "quantize='int8-fast' was removed: its per-tensor weight scales bent vectors (mean cosine "
    "0.94 to float32, 0.76 of top-10 neighbours kept); use quantize='int8'",
}


@dataclass(frozen=True)
class EngineOptions:
    token_budget: int = 16384
    max_batch_size: int = 256
    packed: bool = False
    attention_backend: str = "auto"
    deterministic: bool = False
    tile_rows: int = 0  # deterministic mode: rows per fixed GEMM tile
    quantize: str = "none"
    threads: int | None = None  # intra-op + tokenizer pool size; None: every core (engine/threads.py)
    cpu_parallelism: str = "batches"  # "batches" side by side or torch's "operators" (engine/cpu_parallel.py)


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str | bytes):
        raise InvalidInputError("inputs must be a list of strings, not a single string", field="inputs")
    try:
        items = list(texts)
    except TypeError:
        raise InvalidInputError(
            f"inputs must be a list of strings, got {type(texts).__name__}", field="inputs"
        ) from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInputError(f"inputs[{i}] is {type(item).__name__}, expected str", field="inputs")
    return items


class Embedder:
    """Turns texts into embeddings with one loaded checkpoint.

    Use :meth:`from_pretrained`; then :meth:`embed`. The lower-level
    :meth:`prepare` / :meth:`forward` / :meth:`combine` split exists so the
    server can tokenize off the forward thread and batch across requests.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        settings: ModelSettings,
        options: EngineOptions,
        *,
        name: str,
        dense: tuple[DenseLayer, ...] = (),
        token_facts: TokenizerFacts | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.settings = settings
        self.options = options
        self.name = name
        self.device = loaded.device
        self.dtype = loaded.dtype
        self._dense: list[tuple[torch.nn.Module, torch.nn.Module]] = [
            (layer.linear.to(self.device, torch.float32), layer.activation) for layer in dense
        ]
        self._dense_width = dense[-1].linear.out_features if dense else None
        if options.deterministic:
            make_batch_invariant(self.model, options.tile_rows)
            self._dense = [(FixedTileLinear(lin, options.tile_rows), act) for lin, act in self._dense]  # type: ignore[arg-type]
        # sparse / multi-vector heads the checkpoint declares (engine/outputs.py); None: pooled vectors only
        self.heads: OutputHeads | None = None
        if loaded.output_files is not None:
            self.heads = OutputHeads(
                loaded.output_files,
                tokenizer=self.tokenizer,
                vocab_size=int(self.model.config.vocab_size),
                mlm_head=loaded.mlm_head,
                device=self.device,
                tile_rows=options.tile_rows if options.deterministic else None,
            )
        self.token_facts = token_facts or probe_tokenizer(self.tokenizer, loaded.tokenizer_config_json)
        self._encoder = InputEncoder(
            self.tokenizer,
            settings.max_length,
            append_eos=settings.append_eos,
            exclude_prompt=not settings.include_prompt,
            prepend_bos=settings.prepend_bos,
            tokenizer_appends_special=self.token_facts.ends_with_special,
            prompt_token_skip=settings.prompt_token_skip,
            rstrip_input=settings.rstrip_input,
        )
        self._pad_id = self.tokenizer.pad_token_id or 0
        # embed() tokenizes the next slice of a long list while the current one runs (measured in
        # docs/performance.md); off: one tokenizing pass, then the forward
        self.overlap = True
        # the fused Triton pooling kernel (one program per sequence, no atomics) on CUDA when triton exists
        self._fused_pooling = self.device.type == "cuda" and _triton_available()
        self._takes_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        # RoBERTa-family embeddings number positions from padding_idx + 1 (fairseq): packed
        # batches must pass those numbers, not 0..n-1
        self._position_offset = _position_offset(self.model)
        # CPU: whole batches side by side on one intra-op thread each (engine/cpu_parallel.py); the int8
        # graph runs on ONNX Runtime's own threads
        self._workers: ForwardWorkers | None = None
        if self.device.type == "cpu" and options.cpu_parallelism == "batches" and options.quantize == "none":
            self._workers = forward_workers(options.threads or torch.get_num_threads())
        self.model.config.embedsvc_attention_backend = options.attention_backend
        self.model.config.embedsvc_deterministic = options.deterministic
        # bidirectional attention that transformers does not apply itself (GritLM, LLM2Vec, is_causal=false)
        self._own_bidirectional = False
        if loaded.is_decoder:
            self._set_attention(settings.attention)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        head: str | None = None,
        **options: Any,
    ) -> Embedder:
        """Load ``source`` (None = bundled all-MiniLM-L6-v2, a folder, or a hub id).

        ``options``: ``profile``, ``conversion`` (none/echo/prompteol/bidirectional),
        ``prompts``, ``default_prompt_name``, ``query_prompt_name``,
        ``document_prompt_name``, ``instruction_template``, ``default_instruction``,
        ``append_eos``, ``include_prompt``, ``name``, ``token_budget``,
        ``max_batch_size``, ``batching`` (auto/packed/padded), ``attention_backend``,
        ``deterministic`` (bitwise batch-invariant vectors), ``deterministic_tile_rows``,
        ``quantize`` (``"int8"``: int8 linear layers on CPU through ONNX Runtime),
        ``trust_remote_code``, ``base_model``, ``threads`` (torch's intra-op threads and the
        tokenizer's pool, process-wide; default every core or ``EMBEDSVC_THREADS``), ``task``
        (``"embed"`` only here: rerankers and classifiers load through ``engine/scorer.py``).
        ``head="sequence-classification"``: a Scorer's trunk, its classification head loaded beside it.
        """
        check_options(options, dtype=dtype, device=device)
        if (options.get("task") or "embed") != "embed":
            raise InvalidInputError(
                f"task {options['task']!r}: an Embedder embeds; load rerankers and classifiers with "
                "embedsvc.engine.scorer.load_served (the server does)",
                field="task",
            )
        threads = resolve_threads(options.get("threads"))
        apply_threads(threads)
        loaded = load_model(
            source,
            device=device,
            dtype=dtype,
            attn_implementation=attention.register(),
            trust_remote_code=bool(options.get("trust_remote_code", False)),
            base_model=options.get("base_model"),
            head=head,
        )
        choice = select_profile(
            loaded.source.source_name,
            is_decoder=loaded.is_decoder,
            config=loaded.config_json,
            explicit=options.get("profile"),
        )
        overrides = {k: v for k, v in options.items() if k in SETTING_OPTIONS}
        overrides.update(pooling=pooling, normalize=normalize, max_length=max_length)
        facts = probe_tokenizer(loaded.tokenizer, loaded.tokenizer_config_json)
        settings = resolve_settings(
            choice,
            config=loaded.config_json,
            tokens=facts,
            st=loaded.st,
            is_decoder=loaded.is_decoder,
            model_max_length=_model_max_length(loaded),
            overrides=overrides,
        )
        if settings.conversion != "none" and not loaded.is_decoder:
            raise InvalidInputError(
                f"conversion {settings.conversion!r} applies to decoder models; "
                f"{loaded.source.name} is an encoder",
                field="conversion",
            )
        batching = options.get("batching") or "auto"
        backend = options.get("attention_backend") or "auto"
        if backend != "auto" and backend not in attention.available_backends(loaded.device):
            why = {
                "flash_attn": "flash-attn needs CUDA and pip install 'embedsvc[flash]'",
                "torch_varlen": "torch's varlen attention needs CUDA and torch >= 2.10",
            }.get(backend, "it does not run here")
            raise InvalidInputError(
                f"attention_backend {backend!r} is not available on {loaded.device}: {why}; "
                f"available here: {', '.join(attention.available_backends(loaded.device))}",
                field="attention_backend",
            )
        if backend in attention.FLASH_BACKENDS and loaded.dtype not in attention.HALF_DTYPES:
            raise InvalidInputError(
                f"attention_backend {backend!r} runs only in float16 or bfloat16, the model is loaded "
                f"in {str(loaded.dtype).removeprefix('torch.')}: choose dtype float16/bfloat16 or "
                "attention_backend sdpa_loop",
                field="attention_backend",
            )
        deterministic = bool(options.get("deterministic", False))
        if loaded.remote_code:
            # the checkpoint's own forward knows nothing of packed sequences
            if batching == "packed" or deterministic:
                raise InvalidInputError(
                    "a checkpoint running its own modeling code (trust_remote_code) is embedded in padded "
                    "batches; batching='packed' and deterministic mode need a built-in architecture",
                    field="batching" if batching == "packed" else "deterministic",
                )
            batching = "padded"
        if deterministic and backend == "auto" and loaded.device.type == "cpu":
            backend = "sdpa_loop"
        tile_rows = int(options.get("deterministic_tile_rows") or DEFAULT_TILE_ROWS[loaded.device.type])
        engine = EngineOptions(
            token_budget=int(options.get("token_budget") or DEFAULT_TOKEN_BUDGET[loaded.device.type]),
            max_batch_size=int(options.get("max_batch_size") or EngineOptions.max_batch_size),
            packed=batching != "padded",  # packing measured faster than padding on CPU too
            attention_backend=backend,
            deterministic=deterministic,
            tile_rows=tile_rows,
            threads=threads,
            cpu_parallelism=check_parallelism(options.get("cpu_parallelism")),
        )
        quantize = options.get("quantize") or "none"
        if quantize != "none":
            if loaded.output_files is not None:
                raise InvalidInputError(
                    f"quantize='int8' exports the pooled-vector path; {loaded.source.name} also has "
                    f"{loaded.output_files.kind} heads: serve it in float32 or bfloat16",
                    field="quantize",
                )
            _check_int8(loaded, settings)
            engine = dataclasses.replace(  # the ONNX graph takes padded batches
                engine, packed=False, token_budget=int(options.get("token_budget") or INT8_TOKEN_BUDGET)
            )
            token_types = "token_type_ids" in inspect.signature(loaded.model.forward).parameters
            folder = loaded.st.transformer_dir if loaded.st else loaded.source.folder
            loaded.model = load_int8(
                loaded.model,
                folder,
                token_types=token_types,
                threads=torch.get_num_threads(),
                extra=loaded.notes,
            )
        engine = dataclasses.replace(engine, quantize=quantize)
        return cls(
            loaded,
            settings,
            engine,
            name=options.get("name") or loaded.source.name,
            dense=loaded.st.dense if loaded.st else (),
            token_facts=facts,
        )

    def _set_attention(self, mode: str) -> None:
        """Causal or bidirectional attention in every layer of a decoder."""
        config = self.model.config
        native = bool(getattr(config, "use_bidirectional_attention", False))
        if native and mode == "causal":
            config.use_bidirectional_attention = False  # Gemma3 builds its masks from this flag
        if native and mode == "bidirectional":
            return  # transformers applies it, sliding windows included
        if not isinstance(self.model, torch.nn.Module):
            return  # an exported graph (int8) keeps the attention it was exported with
        causal = mode == "causal"
        self._own_bidirectional = not causal
        # converted decoders (GritLM, LLM2Vec, is_causal=false) attend over the whole input, as those
        # families' reference code does: a causal model's sliding window does not carry over
        config.embedsvc_full_attention = not causal
        for module in self.model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = causal  # type: ignore[assignment]

    @property
    def recipe(self) -> Recipe:
        """The resolved recipe: every setting with its source, warnings, and what was loaded how."""
        return describe_recipe(self)

    # ------------------------------------------------------------- properties
    @property
    def dimension(self) -> int:
        if self._dense_width is not None:
            return int(self._dense_width)
        return int(self.model.config.hidden_size)

    @property
    def quantization(self) -> str:
        """What is quantized and by which runtime, or "none"."""
        info = getattr(self.model, "info", None)
        return info.describe() if info is not None else self.options.quantize

    @property
    def max_length(self) -> int:
        if self.heads is not None and self.heads.colbert is not None:  # queries and documents have their own
            colbert = self.heads.colbert.settings
            return max(colbert.query_length, colbert.document_length)
        return self.settings.max_length

    @property
    def outputs(self) -> tuple[str, ...]:
        """What ``EmbedOptions.outputs`` may ask of this model."""
        return self.heads.offered if self.heads is not None else ("dense",)

    @property
    def cpu_parallelism(self) -> str:
        """ "batches" (whole batches side by side), "operators" (torch's intra-op threads), or "" where
        neither applies (a GPU; the int8 graph on ONNX Runtime's threads)."""
        if self._workers is not None:
            return "batches"
        cpu = self.device.type == "cpu" and self.options.quantize == "none"
        return "operators" if cpu else ""

    @property
    def forward_workers(self) -> int:
        """Batches a CPU forward runs at once (1 with cpu_parallelism "operators" or on a GPU)."""
        return self._workers.workers if self._workers is not None else 1

    @property
    def is_decoder(self) -> bool:
        return self.loaded.is_decoder

    # -------------------------------------------------------------- hot path
    def embed(
        self,
        texts: Sequence[str],
        *,
        input_type: str | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        normalize: bool | None = None,
        truncation: str = "end",
        chunked: bool = False,
    ) -> np.ndarray:
        """Embed ``texts``; returns float32 ``[len(texts), dimensions or self.dimension]``."""
        items = _check_texts(texts)
        # the server's own resolver, so the in-process API refuses with the same errors (fields in order)
        options = EmbedOptions(
            input_type, prompt_name, instruction, dimensions, normalize, truncation, chunked
        )
        resolved = self.resolve(options)
        step = OVERLAP_TEXTS if self.overlap and len(items) > OVERLAP_TEXTS else max(len(items), 1)
        starts = range(0, len(items), step)

        def encode(start: int) -> list[EncodedInput]:
            return self._encode(items[start : start + step], resolved, first_index=start)

        if len(starts) <= 1:
            encoded = encode(0) if items else []
            return self.combine(self.forward(encoded), encoded, len(items), resolved)
        # double buffering: the next slice is tokenized (Rust, without the GIL) while this one runs
        parts = []
        with ThreadPoolExecutor(1, thread_name_prefix="embed-tokenize") as pool:
            upcoming = pool.submit(encode, starts[0])
            for k, start in enumerate(starts):
                encoded = upcoming.result()
                if k + 1 < len(starts):
                    upcoming = pool.submit(encode, starts[k + 1])
                pooled = self.forward(encoded)
                n = min(step, len(items) - start)
                parts.append(self.combine(pooled, encoded, n, resolved))
        return np.concatenate(parts)

    def resolve(self, options: EmbedOptions) -> ResolvedOptions:
        """The one place a request's options are checked against this model (InvalidInputError naming
        the field otherwise); what comes back is taken as given by :meth:`prepare` and :meth:`combine`."""
        self._check_truncation(options.truncation)
        self.check_dimensions(options.dimensions)
        template = self.template_for(
            input_type=options.input_type, prompt_name=options.prompt_name, instruction=options.instruction
        )
        outputs = self._check_outputs(options)
        return ResolvedOptions(
            template=template,
            truncation=options.truncation,
            dimensions=options.dimensions,
            normalize=self.settings.normalize if options.normalize is None else options.normalize,
            chunked=options.chunked,
            input_type=options.input_type,
            outputs=outputs,
        )

    def _check_outputs(self, options: EmbedOptions) -> tuple[str, ...]:
        asked = options.outputs
        if isinstance(asked, str) or not isinstance(asked, tuple | list) or not asked:
            raise InvalidInputError(
                f"outputs must be a non-empty list of {', '.join(OUTPUT_KINDS)}, got {asked!r}",
                field="outputs",
            )
        outputs = tuple(asked)
        offered = self.outputs
        for kind in outputs:
            if kind not in OUTPUT_KINDS:
                raise InvalidInputError(
                    f"unknown output {kind!r}; choose from {', '.join(OUTPUT_KINDS)}", field="outputs"
                )
            if kind not in offered:
                raise InvalidInputError(
                    f"model {self.name} does not give {kind!r} outputs; it offers {', '.join(offered)}",
                    field="outputs",
                )
        if len(set(outputs)) != len(outputs):
            raise InvalidInputError(f"outputs names an output twice: {list(outputs)}", field="outputs")
        if options.chunked and outputs != ("dense",):
            raise InvalidInputError(
                "chunked mode merges a long text's windows into one pooled vector; sparse and multi-vector "
                "outputs are per window: split the text yourself, or leave chunked off",
                field="chunked",
            )
        if self.heads is not None and self.heads.colbert is not None:
            if options.truncation != "end":
                raise InvalidInputError(
                    f"ColBERT checkpoints cut queries and documents at their end; truncation "
                    f"{options.truncation!r} is not offered for model {self.name}",
                    field="truncation",
                )
            if options.prompt_name is not None or options.instruction is not None:
                raise InvalidInputError(
                    f"model {self.name} is a ColBERT checkpoint: its query/document markers are its prompts; "
                    "choose input_type 'query' or 'document' instead of a prompt or instruction",
                    field="prompt_name" if options.prompt_name is not None else "instruction",
                )
        return outputs

    def template_for(
        self,
        *,
        input_type: str | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
    ) -> Template:
        """The prompt / conversion template a request's options select."""
        s = self.settings
        if input_type not in (None, *INPUT_TYPES):
            raise InvalidInputError(
                f"unknown input_type {input_type!r}; choose 'query', 'document' or leave unset",
                field="input_type",
            )
        if prompt_name is not None and instruction is not None:
            raise InvalidInputError("pass either prompt_name or instruction, not both", field="instruction")
        if prompt_name is not None:
            if prompt_name not in s.prompts:
                raise InvalidInputError(
                    f"model {self.name} has no prompt {prompt_name!r}; "
                    f"its prompts: {', '.join(sorted(s.prompts)) or 'none'}",
                    field="prompt_name",
                )
            prompt = s.prompts[prompt_name]
        elif instruction is not None:
            if input_type == "document":
                raise InvalidInputError(
                    "instruction applies to queries; documents are embedded without one "
                    "(leave input_type unset or 'query')",
                    field="instruction",
                )
            if not s.instruction_template:
                raise InvalidInputError(
                    f"model {self.name} has no instruction template; use prompt_name, or configure "
                    "instruction_template (e.g. 'Instruct: {instruction}\\nQuery: ')",
                    field="instruction",
                )
            return self._template(s.instruction_template, instruction)
        elif (
            input_type == "query"
            and not s.query_prompt_name
            and s.instruction_template
            and s.default_instruction
        ):
            return self._template(s.instruction_template, s.default_instruction)
        else:
            prompt = self._prompt_for_input_type(input_type)
        return self._template(prompt, None)

    def _template(self, prompt: str, instruction: str | None) -> Template:
        """A prompt ("{text}" marks the input where it wraps it) with the instruction filled in."""
        before, _, after = prompt.partition("{text}")
        if instruction is not None:
            examples = self._examples_prefix(instruction)
            before, after = (
                piece.replace("{examples}", examples).replace("{instruction}", instruction)
                for piece in (before, after)
            )
        return Template.build(before, CONVERSION_TEMPLATES.get(self.settings.conversion), suffix=after)

    def _examples_prefix(self, instruction: str) -> str:
        # bge-en-icl: each example in the query format with its response, then a blank line
        return "".join(
            ICL_EXAMPLE_TEMPLATE.format(instruction=task or instruction, query=query, response=response)
            + "\n\n"
            for task, query, response in self.settings.examples
        )

    def _prompt_for_input_type(self, input_type: str | None) -> str:
        s = self.settings
        if input_type == "query" and s.query_prompt_name:
            return s.prompts[s.query_prompt_name]
        if input_type == "document" and s.document_prompt_name:
            return s.prompts[s.document_prompt_name]
        if s.default_prompt_name:
            return s.prompts[s.default_prompt_name]
        return ""

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if isinstance(dimensions, bool) or not isinstance(dimensions, int | np.integer):
            raise InvalidInputError(f"dimensions must be an integer, got {dimensions!r}", field="dimensions")
        if not 1 <= dimensions <= self.dimension:
            raise InvalidInputError(
                f"dimensions must be between 1 and {self.dimension} for model {self.name}, got {dimensions}",
                field="dimensions",
            )

    def prepare(
        self, texts: Sequence[str], resolved: ResolvedOptions | None = None, **options: Any
    ) -> list[EncodedInput]:
        """Tokenize (prompt, template, truncation, EOS). Thread-safe; no model call.

        ``resolved`` (from :meth:`resolve`, texts already checked by the caller) is taken as given;
        without it the texts and the keyword options (``EmbedOptions`` fields) are checked first."""
        if resolved is None:
            texts = _check_texts(texts)
            resolved = self.resolve(EmbedOptions(**options))
        elif options:
            raise TypeError("pass either resolved options or keyword options, not both")
        return self._encode(texts, resolved) if texts else []

    def _encode(
        self, texts: Sequence[str], resolved: ResolvedOptions, first_index: int = 0
    ) -> list[EncodedInput]:
        if self.heads is not None and self.heads.colbert is not None:
            # markers, [MASK] expansion and lengths are the checkpoint's own (engine/outputs.py)
            query = resolved.input_type == "query"
            return self.heads.colbert.encode(texts, query=query, first_index=first_index)
        encoded = self._encoder.encode(
            texts,
            resolved.template,
            truncation=resolved.truncation,
            chunked=resolved.chunked,
            first_index=first_index,
        )
        return with_extra_outputs(encoded, tuple(o for o in resolved.outputs if o != "dense"))

    @staticmethod
    def _check_truncation(truncation: str) -> None:
        if truncation not in TRUNCATIONS:
            raise InvalidInputError(
                f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATIONS)}",
                field="truncation",
            )

    @torch.inference_mode()
    def forward(self, encoded: Sequence[EncodedInput]) -> torch.Tensor:
        """Pooled (and Dense-projected) float32 vectors, one per encoded sequence, in order.

        On CUDA they come back in host memory: each batch's rows are copied out asynchronously into
        one pinned buffer and the stream is waited on once, after the last batch, so the host plans
        and stages the next batch while the device still runs the current one."""
        return self._run(encoded, with_tokens=False).pooled

    @torch.inference_mode()
    def forward_outputs(self, encoded: Sequence[EncodedInput]) -> Forwarded:
        """Pooled vectors and, for the sequences that ask for them, sparse and multi-vector outputs,
        from the same forward pass."""
        return self._run(encoded, with_tokens=True)

    def _run(self, encoded: Sequence[EncodedInput], *, with_tokens: bool) -> Forwarded:
        cuda = self.device.type == "cuda"
        tokens: list[TokenOutputs] = [TokenOutputs() for _ in encoded] if with_tokens else []
        width = self.dimension
        if not encoded:
            return Forwarded(torch.empty((0, width), dtype=torch.float32), tokens)
        batches = self._plan(encoded)
        if cuda:  # rows copied out per batch without waiting; one wait at the end
            out = torch.empty((len(encoded), width), dtype=torch.float32, pin_memory=True)
        else:
            out = torch.empty((len(encoded), width), dtype=torch.float32, device=self.device)

        def one(batch: list[int]) -> tuple[torch.Tensor, list[TokenOutputs] | None]:
            with torch.inference_mode():  # per thread: the pool's workers need it too
                seqs = [encoded[i] for i in batch]
                keep = with_tokens and self.heads is not None and any(s.extra_outputs for s in seqs)
                pooled, flat = self._forward_batch(seqs, keep_tokens=keep)
                if flat is None:
                    return pooled, None
                assert self.heads is not None
                bounds = np.zeros(len(seqs) + 1, dtype=np.int64)
                np.cumsum([len(s.ids) for s in seqs], out=bounds[1:])
                return pooled, self.heads.compute(flat, seqs, bounds)

        if self._workers is not None:  # CPU: batches side by side (engine/cpu_parallel.py)
            batches = split_for_workers(
                batches,
                [len(e.ids) for e in encoded],
                self._workers.workers,
                max_batch_size=self.options.max_batch_size,
                packed=self.options.packed,
            )
            results = self._workers.map(one, batches)
        else:
            results = map(one, batches)  # type: ignore[assignment]  # lazily: CUDA overlaps host and device
        row = 0
        for batch, (pooled, extra) in zip(batches, results, strict=True):
            if cuda:
                out[row : row + len(batch)].copy_(pooled, non_blocking=True)
                row += len(batch)
            else:
                out[torch.tensor(batch, device=self.device)] = pooled
            if extra is not None:
                for i, result in zip(batch, extra, strict=True):
                    tokens[i] = result
        if cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            done.synchronize()  # the one wait: every batch's rows are in host memory after it
            order = torch.from_numpy(
                np.fromiter(itertools.chain.from_iterable(batches), np.int64, len(encoded))
            )
            staged, out = out, torch.empty((len(encoded), width), dtype=torch.float32)
            out[order] = staged
        _trim_after(encoded)
        return Forwarded(out, tokens)

    def _plan(self, encoded: Sequence[EncodedInput]) -> list[list[int]]:
        return plan_batches(
            [len(e.ids) for e in encoded],
            token_budget=self.options.token_budget,
            max_batch_size=self.options.max_batch_size,
            packed=self.options.packed,
        )

    def _forward_batch(
        self, seqs: Sequence[EncodedInput], *, keep_tokens: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch's pooled (Dense-projected) rows, and its tokens' states when ``keep_tokens``."""
        # ColBERT's un-attended [MASK] expansion is a key mask: padded batches (queries share one length)
        packed = self.options.packed and all(s.attended is None for s in seqs)
        run = self._forward_packed if packed else self._forward_padded
        pooled, flat = run(seqs, keep_tokens=keep_tokens)
        for linear, activation in self._dense:
            pooled = activation(linear(pooled))
        return pooled, flat

    def _stage(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """int64 host arrays on the model's device as views of one tensor: on CUDA one pinned buffer
        and one asynchronous copy per batch (ordered before the forward by the stream; torch's pinned
        allocator keeps the buffer until the copy is done), not one blocking copy per array."""
        sizes = [len(a) for a in arrays]
        host = torch.empty(sum(sizes), dtype=torch.int64, pin_memory=self.device.type == "cuda")
        np.concatenate(arrays, out=host.numpy())
        return list(host.to(self.device, non_blocking=True).split(sizes))

    def _forward_padded(
        self, seqs: Sequence[EncodedInput], *, keep_tokens: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        longest = max(len(s.ids) for s in seqs)
        ids = torch.full((len(seqs), longest), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
            mask[row, : len(seq.ids)] = 1
        attend = mask
        if any(s.attended is not None for s in seqs):
            attend = mask.clone()
            for row, seq in enumerate(seqs):
                if seq.attended is not None:
                    attend[row, seq.attended :] = 0
        ids, mask, attend = ids.to(self.device), mask.to(self.device), attend.to(self.device)
        model_mask: torch.Tensor = attend
        if self._own_bidirectional:
            # a 4D mask is used as given: padding hidden, no causal triangle, no window
            model_mask = attend.bool()[:, None, None, :].expand(-1, 1, longest, -1)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": model_mask}
        if self._takes_token_types:
            types = torch.zeros_like(ids)
            for row, seq in enumerate(seqs):
                if seq.second_start is not None:  # a cross-encoder's pair: the second text is type 1
                    types[row, seq.second_start : len(seq.ids)] = 1
            kwargs["token_type_ids"] = types
        hidden = _last_hidden_state(self.model(**kwargs))
        starts = torch.tensor([s.pool_start for s in seqs], device=self.device)
        ends = torch.tensor([s.pool_end for s in seqs], device=self.device)
        flat = hidden[mask.bool()] if keep_tokens else None  # right padding: each sequence's tokens in order
        return pool_padded(hidden, mask, self.settings.pooling, starts, ends), flat

    def _forward_packed(
        self, seqs: Sequence[EncodedInput], *, keep_tokens: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # ids, positions and boundaries built in bulk (numpy), never token by token in Python
        lengths = np.fromiter((len(s.ids) for s in seqs), dtype=np.int64, count=len(seqs))
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(s.ids for s in seqs), dtype=np.int64, count=total)
        bounds = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=bounds[1:])
        positions_np = np.arange(total) - np.repeat(bounds[:-1], lengths) + self._position_offset
        starts_np = np.fromiter((s.pool_start for s in seqs), dtype=np.int64, count=len(seqs))
        ends_np = np.fromiter((s.pool_end for s in seqs), dtype=np.int64, count=len(seqs))
        # spans known on the host to cover every token: pooling needs no span test on the device
        whole = not starts_np.any() and bool((ends_np == lengths).all())
        arrays = [flat, positions_np, bounds, starts_np, ends_np]
        if self._takes_token_types:  # 1 from a pair's second text on (cross-encoders), else 0
            arrays.append(_token_types(seqs, lengths, bounds))
        ids, positions, cu64, starts, ends, *types = self._stage(*arrays)
        cu = cu64.to(torch.int32)
        longest = int(lengths.max())
        kwargs: dict[str, Any] = {
            "input_ids": ids[None],
            "position_ids": positions[None],
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }
        if types:
            kwargs["token_type_ids"] = types[0][None]
        hidden = self.model(**kwargs).last_hidden_state[0]
        states = hidden if keep_tokens else None
        if self._fused_pooling:
            from embedsvc.kernels.segment_pool import segment_pool

            if self.settings.pooling == "mean_sqrt_len":
                return sqrt_len_scale(segment_pool(hidden, cu, starts, ends, "mean"), starts, ends), states
            return segment_pool(hidden, cu, starts, ends, self.settings.pooling), states
        if whole:
            pooled = pool_packed(hidden, cu, self.settings.pooling, per_sequence=self.options.deterministic)
        else:
            pooled = pool_packed(
                hidden, cu, self.settings.pooling, starts, ends, per_sequence=self.options.deterministic
            )
        return pooled, states

    def combine(
        self,
        pooled: torch.Tensor,
        encoded: Sequence[EncodedInput],
        n_texts: int,
        resolved: ResolvedOptions,
    ) -> np.ndarray:
        """Merge chunks of one text (token-weighted mean), truncate, normalize; numpy float32.
        ``resolved`` comes from :meth:`resolve` and is not checked again."""
        width = resolved.dimensions or self.dimension
        if n_texts == 0:
            return np.zeros((0, width), dtype=np.float32)
        pooled = pooled.cpu()
        base = encoded[0].source
        groups: list[list[int]] = [[] for _ in range(n_texts)]
        for row, e in enumerate(encoded):
            groups[e.source - base].append(row)
        if all(len(g) == 1 for g in groups):
            merged = pooled[[g[0] for g in groups]]
        else:
            rows = []
            for group in groups:
                if len(group) == 1:  # a single window is used as is: same bits as when embedded alone
                    rows.append(pooled[group[0]])
                    continue
                weights = torch.tensor([float(encoded[r].text_tokens or len(encoded[r].ids)) for r in group])
                # chunks of one text summed in order: independent of the rest of the batch
                rows.append((pooled[group] * weights[:, None]).sum(dim=0) / weights.sum())
            merged = torch.stack(rows)
        final = finalize(merged, resolved.dimensions, resolved.normalize)
        return final.cpu().numpy().astype(np.float32, copy=False)

    def combine_outputs(
        self, result: Forwarded, encoded: Sequence[EncodedInput], n_texts: int, resolved: ResolvedOptions
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]] | None, list[np.ndarray] | None]:
        """The dense vectors (``[n, 0]`` when not asked for), sparse vectors and multi-vectors of
        ``n_texts`` texts; one sequence per text (``resolve`` refuses chunked mode with these)."""
        if "dense" in resolved.outputs:
            vectors = self.combine(result.pooled, encoded, n_texts, resolved)
        else:
            vectors = np.zeros((n_texts, 0), dtype=np.float32)
        sparse = multi = None
        if "sparse" in resolved.outputs:
            sparse = [t.sparse for t in result.tokens]
            assert len(sparse) == n_texts and all(v is not None for v in sparse)
        if "multi_vector" in resolved.outputs:
            multi = [t.multi_vector.numpy() for t in result.tokens if t.multi_vector is not None]
            assert len(multi) == n_texts
        return vectors, sparse, multi  # type: ignore[return-value]

    def sparse_tokens(self, ids: Sequence[int]) -> list[str]:
        """Token strings of sparse output ids (TEI's /embed_sparse reports them)."""
        return list(self.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))

    def count_tokens(self, encoded: Sequence[EncodedInput], n_texts: int) -> list[int]:
        """Tokens per caller text (chunks summed), as the model sees them."""
        counts = [0] * n_texts
        base = encoded[0].source if encoded else 0
        for e in encoded:
            counts[e.source - base] += len(e.ids)
        return counts

    def __repr__(self) -> str:
        return (
            f"Embedder(name={self.name!r}, dimension={self.dimension}, max_length={self.max_length}, "
            f"pooling={self.settings.pooling!r}, profile={self.settings.profile!r}, "
            f"device={self.device}, dtype={self.dtype})"
        )


def _token_types(seqs: Sequence[EncodedInput], lengths: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Packed token type ids: 1 from a pair's second text on (BERT cross-encoders), else 0."""
    seconds = np.fromiter(
        (len(s.ids) if s.second_start is None else s.second_start for s in seqs),
        dtype=np.int64,
        count=len(seqs),
    )
    rank = np.arange(int(bounds[-1])) - np.repeat(bounds[:-1], lengths)
    return (rank >= np.repeat(seconds, lengths)).astype(np.int64)


def _trim_after(encoded: Sequence[EncodedInput]) -> None:
    """A huge input's batches are freed: their heap back to the system (not for ordinary lists, where
    trimming cost ~16 ms per 3 000 texts for nothing)."""
    if sum(len(e.ids) for e in encoded) >= TRIM_AFTER_TOKENS:
        trim_heap()


def _last_hidden_state(output: Any) -> torch.Tensor:
    # custom modeling code (trust_remote_code) may return a plain tuple
    hidden = getattr(output, "last_hidden_state", None)
    return output[0] if hidden is None else hidden  # type: ignore[no-any-return]


def _position_offset(model: Any) -> int:
    """First position id of a sequence: padding_idx + 1 for fairseq-style embeddings (RoBERTa,
    XLM-R, MPNet number positions from there), else 0. Probed, since each family words it its own way."""
    embeddings = getattr(model, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    if embeddings is None or padding_idx is None:
        return 0
    device = next(model.parameters()).device
    token = (int(padding_idx) + 1) % int(model.config.vocab_size)
    ids = torch.full((1, 3), token, dtype=torch.long, device=device)
    offset = int(padding_idx) + 1
    try:
        with torch.inference_mode():
            implicit = embeddings(input_ids=ids)
            explicit = embeddings(input_ids=ids, position_ids=torch.arange(3, device=device)[None] + offset)
    except (TypeError, RuntimeError):
        return 0
    return offset if torch.equal(implicit, explicit) else 0


def _triton_available() -> bool:
    from embedsvc.kernels.segment_pool import triton_available

    return triton_available()


def check_options(options: dict[str, Any], *, dtype: Any = None, device: Any = None) -> None:
    """Every check that needs no checkpoint: run before a server binds its port or loads a model."""
    known = set(SETTING_OPTIONS) | set(_ENGINE_OPTIONS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", field=unknown[0]
        )
    if isinstance(dtype, str) and dtype.lower() not in DTYPE_ALIASES:
        raise InvalidInputError(
            f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_ALIASES)}", field="dtype"
        )
    batching = options.get("batching") or "auto"
    if batching not in BATCHING_MODES:
        raise InvalidInputError(
            f"unknown batching {batching!r}; choose one of {', '.join(BATCHING_MODES)}", field="batching"
        )
    backend = options.get("attention_backend") or "auto"
    if backend not in attention.BACKENDS:
        raise InvalidInputError(
            f"unknown attention_backend {backend!r}; choose one of {', '.join(attention.BACKENDS)}",
            field="attention_backend",
        )
    resolve_threads(options.get("threads"))
    check_parallelism(options.get("cpu_parallelism"))
    task = options.get("task")
    if task is not None and task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}", field="task")
    deterministic = bool(options.get("deterministic", False))
    if deterministic and batching == "padded":
        raise InvalidInputError(
            "deterministic mode packs sequences; batching='padded' cannot be combined with it",
            field="batching",
        )
    quantize = options.get("quantize") or "none"
    if quantize in _REMOVED_QUANTIZATIONS:
        raise InvalidInputError(_REMOVED_QUANTIZATIONS[quantize], field="quantize")
    if quantize not in QUANTIZATIONS:
        raise InvalidInputError(
            f"unknown quantize {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}", field="quantize"
        )
    if quantize == "none":
        return
    if deterministic:
        raise InvalidInputError(
            "quantize='int8' cannot be combined with deterministic mode", field="quantize"
        )
    if batching == "packed":
        raise InvalidInputError(
            "quantize='int8' runs padded batches (an ONNX graph); leave batching unset or 'padded'",
            field="batching",
        )
    wide = dtype is None or str(dtype).lower().removeprefix("torch.") in ("float32", "fp32")
    if not wide or str(device or "cpu").startswith("cuda"):
        raise InvalidInputError(
            "quantize='int8' is a CPU mode for float32 models; on a GPU use dtype='bfloat16'",
            field="quantize",
        )


def _check_int8(loaded: LoadedModel, settings: ModelSettings) -> None:
    if loaded.device.type != "cpu" or loaded.dtype != torch.float32:
        raise InvalidInputError(
            "quantize='int8' is a CPU mode for float32 models; on a GPU use dtype='bfloat16'",
            field="quantize",
        )
    native = bool(loaded.config_json.get("use_bidirectional_attention"))
    if loaded.is_decoder and settings.attention == "bidirectional" and not native:
        raise InvalidInputError(
            "quantize='int8' exports the model's own attention masks; a decoder made bidirectional "
            f"({settings.sources.get('attention')}) cannot be exported that way: use float32",
            field="quantize",
        )


def _model_max_length(loaded: LoadedModel) -> int:
    limits = [getattr(loaded.config, "max_position_embeddings", None)]
    tok_limit = getattr(loaded.tokenizer, "model_max_length", None)
    if tok_limit and tok_limit < 1_000_000:
        limits.append(tok_limit)
    found = [int(x) for x in limits if x]
    return min(found) if found else 512
