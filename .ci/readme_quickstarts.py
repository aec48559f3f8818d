"""Runs the README's quick starts as a user pasting them would: every ```python block that follows a
line `<!-- ci: run -->`, each in a fresh interpreter, from an empty folder outside the source tree
(so `import v2drop_kernels` is the installed package). Used by .ci/wheel.sh in a venv with only the
built wheel and its [transformers] extra. Exit status 1 if any block fails (its output is shown).

    python .ci/readme_quickstarts.py README.md [--list]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time

MARK = "<!-- ci: run -->"


def blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every marked python block, in order."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or lines[j].strip() != "```python":
            raise SystemExit(f"line {i + 1}: {MARK} must be followed by a ```python block")
        end = next(k for k in range(j + 1, len(lines)) if lines[k].strip() == "```")
        found.append((j + 2, "\n".join(lines[j + 1:end]) + "\n"))
    return found


def main(argv: list[str]) -> int:
    path = argv[0]
    with open(path) as f:
        found = blocks(f.read())
    if not found:
        print(f"{path}: no block marked {MARK}")
        return 1
    if "--list" in argv:
        for line, code in found:
            print(f"--- {path}:{line}\n{code}")
        return 0
    failed = 0
    for line, code in found:
        with tempfile.TemporaryDirectory() as where:
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True, text=True)
        took = time.perf_counter() - t0
        print(f"{path}:{line}: {'ok' if run.returncode == 0 else 'FAILED'} ({took:.1f} s)")
        if run.returncode != 0:
            failed += 1
            print(re.sub(r"(?m)^", "    ", run.stdout + run.stderr))
    print(f"{len(found) - failed} of {len(found)} quick starts ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
