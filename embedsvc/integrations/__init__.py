"""Framework classes over the gRPC client: LangChain (``langchain``) and LlamaIndex (``llama_index``).

Each is an optional extra: ``pip install 'embedsvc[langchain]'`` / ``'embedsvc[llama-index]'``.
Documents are embedded as ``input_type="document"`` and queries as ``"query"``, so models with
query instructions or prompts (e5, bge, Qwen3-Embedding, ...) get them where they belong.

May import: ``client`` (and through it ``wire``, ``errors``) and the frameworks, lazily. Never
``engine/``, ``index/``, ``server/`` or ``pipeline/``: these classes run in the user's application and
talk to a server (``tests/test_layering.py`` pins this).
"""
