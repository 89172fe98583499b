"""How text becomes vectors. Never imports grpc."""

from embedsvc.engine.threads import default_wait_policy

default_wait_policy()  # before any engine module imports torch (engine/threads.py says why)
