#!/usr/bin/env bash
# Creates a Python virtual environment with PyTorch for the reference trainer torch_lm.py.
# Usage: reference/setup.sh [VENV_DIR]   (default /tmp/lstm-lm-ref; about 5.5 GB)
set -euo pipefail
venv=${1:-/tmp/lstm-lm-ref}
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "reference environment ready: $venv/bin/python"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet torch numpy
"$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'
echo "reference environment ready: $venv/bin/python"
