"""Names a dtype may be given by (CLI, config file, Python API), without importing torch."""

from __future__ import annotations

# alias -> torch dtype name
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
