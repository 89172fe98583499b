"""Generated from protos/embedsvc/v1 by scripts/gen_protos.py; do not edit."""
