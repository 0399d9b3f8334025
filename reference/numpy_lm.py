#!/usr/bin/env python3
"""Scores a text with an `lstm-lm export` folder in plain numpy: an implementation written
independently of lstm-lm and of Burn, to check the perplexities lstm-lm prints.

    python3 reference/numpy_lm.py EXPORT_DIR --text FILE [--sentences]

Reads model.safetensors (PyTorch's names and shapes, see `lstm-lm export --help`), vocab.txt
and config.json; cuts each line into whitespace-separated words plus `<eos>` (words outside the
vocabulary are `<unk>`), concatenates the lines into one stream and predicts every token after
the first from all before it, from a zero state (lstm-lm eval's full context with one column).
With --sentences each line is scored on its own from a zero state, its first token predicted
after <eos> (lstm-lm score --context sentence), and `lines` lists each line's summed
log-probability (null for a blank line). Computes in float64; prints one JSON object: tokens,
loss (mean nats), perplexity.
Needs numpy and safetensors (pip install numpy safetensors).
"""
import argparse
import json
import math
import os
import sys

# One thread: the step-by-step matrix-vector products are small; idle BLAS threads only spin.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
os.environ.setdefault('OMP_NUM_THREADS', '1')
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402


def read_vocab(path):
    with open(path, encoding='utf-8') as f:
        words = f.read().split('\n')
    if words and words[-1] == '':
        words.pop()
    return {w: i for i, w in enumerate(words)}


def encode_lines(path, vocab, eos, unk):
    """Each line's ids with its <eos> (empty for a blank line), and the unknown words."""
    lines, unknown = [], 0
    with open(path, encoding='utf-8') as f:
        for line in f.read().splitlines():
            words = line.split()
            ids = []
            for w in words:
                i = vocab.get(w)
                if i is None:
                    i, unknown = unk, unknown + 1
                ids.append(i)
            lines.append(ids + [eos] if words else [])
    return lines, unknown


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def lstm(x, w, layers, hidden):
    """x: [T, E] -> top layer's hidden states [T, H], one step at a time from zeros."""
    for k in range(layers):
        w_ih, w_hh = w['lstm.weight_ih_l%d' % k], w['lstm.weight_hh_l%d' % k]
        b = w['lstm.bias_ih_l%d' % k] + w['lstm.bias_hh_l%d' % k]
        projected = x @ w_ih.T + b
        h, c = np.zeros(hidden), np.zeros(hidden)
        out = np.empty((x.shape[0], hidden))
        for t in range(x.shape[0]):
            g = projected[t] + w_hh @ h
            i, f, gg, o = np.split(g, 4)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(gg)
            h = sigmoid(o) * np.tanh(c)
            out[t] = h
        x = out
    return x


def target_log_probs(hs, targets, w, config):
    """log p(target) for each row of hs [N, H]."""
    if config['softmax'] == 'full':
        lp = log_softmax(hs @ w['proj.weight'].T + w['proj.bias'])
        return lp[np.arange(len(targets)), targets]
    cutoffs = list(config['cutoffs']) + [config['vocab_size']]
    head = log_softmax(hs @ w['asm.head.weight'].T)
    out = np.empty(len(targets))
    short = cutoffs[0]
    for n, t in enumerate(targets):
        if t < short:
            out[n] = head[n, t]
            continue
        c = next(i for i in range(len(cutoffs) - 1) if cutoffs[i] <= t < cutoffs[i + 1])
        z = (w['asm.tail.%d.1.weight' % c] @ (w['asm.tail.%d.0.weight' % c] @ hs[n]))
        out[n] = head[n, short + c] + log_softmax(z)[t - cutoffs[c]]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('export_dir')
    ap.add_argument('--text', required=True)
    ap.add_argument('--sentences', action='store_true')
    args = ap.parse_args()
    with open(os.path.join(args.export_dir, 'config.json')) as f:
        config = json.load(f)
    if config.get('format') != 'lstm-lm-export' or config.get('tokenizer') != 'word':
        sys.exit('numpy_lm.py reads word-level lstm-lm exports (config.json format lstm-lm-export)')
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(args.export_dir, 'model.safetensors')).items()}
    vocab = read_vocab(os.path.join(args.export_dir, 'vocab.txt'))
    if len(vocab) != config['vocab_size'] or w['embed.weight'].shape[0] != config['vocab_size']:
        sys.exit('vocab.txt, config.json and embed.weight disagree on the vocabulary size')
    lines, unknown = encode_lines(args.text, vocab, config['eos_id'], config['unk_id'])

    def log_probs(inputs, targets):
        hs = lstm(w['embed.weight'][inputs], w, config['num_layers'], config['hidden_size'])
        return target_log_probs(hs, np.array(targets, dtype=np.int64), w, config)

    out = dict(unknown_tokens=unknown)
    if args.sentences:
        sums = [float(log_probs([config['eos_id']] + ids[:-1], ids).sum()) if ids else None
                for ids in lines]
        total, tokens = -sum(x for x in sums if x is not None), sum(len(ids) for ids in lines)
        out['lines'] = sums
    else:
        ids = [i for line in lines for i in line]
        lp = log_probs(ids[:-1], ids[1:])
        total, tokens = float(-lp.sum()), len(lp)
    loss = total / tokens
    out.update(tokens=tokens, loss=loss, perplexity=math.exp(loss))
    print(json.dumps(out))


if __name__ == '__main__':
    main()
