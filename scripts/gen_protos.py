#!/usr/bin/env python3
"""Generate the Python gRPC code (and .pyi stubs) in embedsvc/v1 from protos/.

python scripts/gen_protos.py           # write
python scripts/gen_protos.py --check   # exit 1 if the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "embedsvc" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> Path:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return out_root / "embedsvc" / "v1"


def generated_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if embedsvc/v1 is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = generated_files(fresh)
        if args.check:
            current = generated_files(OUT_PACKAGE) if OUT_PACKAGE.exists() else []
            stale = [
                n for n in names if n not in current or not filecmp.cmp(fresh / n, OUT_PACKAGE / n, False)
            ]
            extra = sorted(set(current) - set(names))
            if stale or extra:
                print(f"stale generated code: {stale + extra}; run: python scripts/gen_protos.py")
                return 1
            print("generated code is up to date")
            return 0
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for old in generated_files(OUT_PACKAGE):
            (OUT_PACKAGE / old).unlink()
        for name in names:
            shutil.copy2(fresh / name, OUT_PACKAGE / name)
        init = OUT_PACKAGE / "__init__.py"
        if not init.exists():
            init.write_text(
                '"""Generated from protos/embedsvc/v1 by scripts/gen_protos.py; do not edit."""\n'
            )
    print(f"wrote {', '.join(names)} to {OUT_PACKAGE.relative_to(ROOT)}")
    subprocess.run([sys.executable, "-c", "import embedsvc.v1.embedding_pb2_grpc"], check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
