"""Package discovery (the rest of the metadata is in pyproject.toml).

Every package under embedsvc/ is found, none listed by hand. The Triton kernels live in kernels/ but
install as ``embedsvc.kernels``: a top-level package named ``kernels`` would shadow the PyPI package
that transformers imports, and pyproject.toml's ``find`` cannot rename a folder.
"""

from setuptools import find_packages, setup

KERNELS = "embedsvc.kernels"

setup(
    packages=[
        *find_packages(include=["embedsvc", "embedsvc.*"]),
        KERNELS,
        *(f"{KERNELS}.{name}" for name in find_packages("kernels")),
    ],
    package_dir={"embedsvc": "embedsvc", KERNELS: "kernels"},
)
