"""Triton kernels, installed as ``embedsvc.kernels``.

Reached only through the engine's backend selection, so a CPU install never
needs Triton. Each kernel sits beside the plain-torch reference it is tested
against (see the performance issue for the kernels planned here).
"""
