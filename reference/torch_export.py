#!/usr/bin/env python3
"""Loads an `lstm-lm export` folder into PyTorch's modules (torch_lm.py's LM: nn.Embedding,
nn.LSTM, nn.Linear or nn.AdaptiveLogSoftmaxWithLoss; load_state_dict with strict=True) and
scores a text with full context, as `lstm-lm eval --text FILE` does with one column: each line's
words plus <eos> (unknown words as <unk>) in one stream, every token after the first predicted
from all before it.

    python reference/torch_export.py EXPORT_DIR --text FILE

Needs torch and safetensors (reference/setup.sh, then pip install safetensors). Prints one JSON
object: tokens, loss (mean nats), perplexity.
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_lm import LM  # noqa: E402
from numpy_lm import encode, read_vocab  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('export_dir')
    ap.add_argument('--text', required=True)
    ap.add_argument('--bptt', type=int, default=35, help='window length; the state is carried across windows')
    args = ap.parse_args()
    with open(os.path.join(args.export_dir, 'config.json')) as f:
        c = json.load(f)
    cutoffs = c['cutoffs'] if c['softmax'] == 'adaptive' else None
    model = LM(c['vocab_size'], c['embedding_dim'], c['hidden_size'], c['num_layers'],
               cutoffs=cutoffs, div_value=c['div_value'] or 4.0)
    model.load_state_dict(load_file(os.path.join(args.export_dir, 'model.safetensors')), strict=True)
    model.eval()
    vocab = read_vocab(os.path.join(args.export_dir, 'vocab.txt'))
    ids, _ = encode(args.text, vocab, c['eos_id'], c['unk_id'])
    stream = torch.tensor(ids).view(-1, 1)  # (T, 1): one column
    total, n, state = 0.0, 0, None
    with torch.no_grad():
        for i in range(0, stream.shape[0] - 1, args.bptt):
            t = min(args.bptt, stream.shape[0] - 1 - i)
            out, state = model(stream[i:i + t], state)
            total += model.nll(out, stream[i + 1:i + 1 + t]).double().sum().item()
            n += t
    loss = total / n
    print(json.dumps(dict(tokens=n, loss=loss, perplexity=math.exp(loss))))


if __name__ == '__main__':
    main()
