"""Vector encodings on the wire (shared by server and client; numpy only).

float16: little-endian IEEE half floats. int8: symmetric per vector, value ~= q * scale
with scale = max|v| / 127. binary: one bit per dimension, 1 where v > 0, MSB first.
"""

from __future__ import annotations

import numpy as np

ENCODINGS = ("float32", "float16", "int8", "binary")


def encode_int8(vector: np.ndarray) -> tuple[bytes, float]:
    peak = float(np.abs(vector).max()) if vector.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    return np.clip(np.rint(vector / scale), -127, 127).astype(np.int8).tobytes(), scale


def decode_int8(data: bytes, scale: float) -> np.ndarray:
    return np.frombuffer(data, dtype=np.int8).astype(np.float32) * np.float32(scale)


def encode_float16(vector: np.ndarray) -> bytes:
    return vector.astype("<f2").tobytes()


def decode_float16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


def encode_binary(vector: np.ndarray) -> bytes:
    return np.packbits(vector > 0).tobytes()


def decode_binary(data: bytes, dimensions: int) -> np.ndarray:
    """Bits back as float32 0/1 values."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:dimensions].astype(np.float32)
