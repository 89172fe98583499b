"""What a model is: family profiles, the settings a checkpoint's files and its user give (and where
each came from), sentence-transformers metadata, tokenizer facts, dtypes, and loading a checkpoint.

May import: ``errors``, torch, transformers, safetensors. Never ``engine/`` (which turns a model into
vectors and imports this package), nor ``index/``, ``server/``, ``pipeline/``, ``cli/``, ``config``,
grpc or generated code (``tests/test_layering.py`` pins this).
"""
