#!/usr/bin/env bash
# The adaptive softmax against the full softmax and against PyTorch's
# nn.AdaptiveLogSoftmaxWithLoss, side by side in one run, alternating (zaremba-small sizes:
# 2 x 200, stream batch 20, bptt 20, SGD 1, clip 5; the output layer padded to 250,000 words).
#
#   scripts/adaptive-bench.sh TEXT [ROUNDS] [PYTHON]
#
# TEXT: a word corpus with a large vocabulary, e.g. the first 150,000 lines of
# `cargo xtask gen-corpus --tokens 10000000 --out zipf-10m.txt` (3.2 M tokens, 211 k words).
# PYTHON: the reference venv's python (reference/setup.sh; default /tmp/lstm-lm-ref/bin/python).
# Both sides rank the vocabulary by count (lstm-lm always does; torch_lm.py --rank-vocab), so
# the cutoffs cut the same clusters. Prints one line per system and round: tokens/s.
set -euo pipefail
text=${1:?usage: scripts/adaptive-bench.sh TEXT [ROUNDS] [PYTHON]}
rounds=${2:-2}
python=${3:-/tmp/lstm-lm-ref/bin/python}
cutoffs=${CUTOFFS:-20000,60000}
vocab=${VOCAB:-250000}
here=$(cd "$(dirname "$0")/.." && pwd)
lstm_lm=${LSTM_LM:-$here/target/release/lstm-lm}
[[ -x $lstm_lm ]] || { echo "build first: cargo build --release (or set LSTM_LM)" >&2; exit 1; }

ours() {  # $1 = extra flags
  "$lstm_lm" bench --config zaremba-small --text "$text" --min-vocab "$vocab" --steps 20 \
    --warmup 2 --no-ceiling $1 | tail -1 | grep -o '^.*tokens/s\|update [0-9.]*\|peak RSS [0-9]* MiB' | tr '\n' ' '
  echo
}
theirs() {  # $1 = extra flags; tokens/s over batches 21-30 (torch_lm.py logs the last 10)
  "$python" "$here/reference/torch_lm.py" --mode bptt --train "$text" --train-frac 0.99 \
    --rank-vocab --min-vocab "$vocab" --emb 200 --hidden 200 --batch-size 20 --bptt 20 \
    --init-range 0.1 --max-batches 30 --log-interval 10 --no-eval $1 \
    | grep 'ep 1 batch 30:' | grep -o '[0-9]* tok/s'
}
for round in $(seq "$rounds"); do
  echo "round $round ($(date -u +%H:%M), load $(cut -d' ' -f1 /proc/loadavg))"
  echo "  lstm-lm adaptive: $(ours "--cutoffs $cutoffs")"
  echo "  PyTorch adaptive: $(theirs "--cutoffs $cutoffs")"
  echo "  lstm-lm full:     $(ours "")"
  echo "  PyTorch full:     $(theirs "")"
done
