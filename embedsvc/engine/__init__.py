"""How text becomes vectors: the per-model facade (``service.py``: options validated once, admission,
scheduling, combining), the scheduler, tokenizing, the forward pass (``embedder.py``), attention backends,
pooling, and the recipe a served model reports (``recipe.py``).

May import: ``models/`` (what a model is), ``errors``, ``kernels`` (through backend selection only),
torch, transformers, numpy. Never grpc or generated code (``embedsvc.v1``), ``wire``, ``client``,
``server/``, ``index/``, ``pipeline/``, ``cli/`` or ``config``: callers hand it plain values and get
numpy arrays back (``tests/test_layering.py`` pins this).
"""

from embedsvc.engine.threads import default_wait_policy

default_wait_policy()  # before any engine module imports torch (engine/threads.py says why)
