#!/usr/bin/env python3
"""Writes tests/fixtures/import/: two small PyTorch LSTM language models as PyTorch saves them,
with their vocabularies and the perplexities PyTorch computes, for tests/import.rs.

  torch_lm/  trained by reference/torch_lm.py --mode bptt --save: names embed/lstm/proj, the
             vocabulary in order of first appearance, no <pad>, <unk> wherever --max-vocab put it;
             expected.json holds the validation perplexity torch_lm.py printed.
  rnnmodel/  PyTorch word_language_model's RNNModel (names encoder/rnn/decoder, output tied to
             the embedding) saved as nn.DataParallel does (every name prefixed with "module."),
             its vocabulary that of all the text (no <unk>, as word_language_model's Corpus
             builds it); expected.json holds the perplexity of its evaluate() on valid.txt.

The text is Tiny Shakespeare (assets/tinyshakespeare.txt). Run from the repository root:
    reference/setup.sh && /tmp/lstm-lm-ref/bin/python reference/make_import_fixtures.py
"""
import json
import math
import os
import subprocess
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'tests', 'fixtures', 'import')


def write_text(lines, path):
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def torch_lm_fixture(train, valid):
    out = os.path.join(OUT, 'torch_lm')
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, 'reference', 'torch_lm.py'), '--mode', 'bptt',
           '--train', train, '--valid', valid, '--emb', '16', '--hidden', '24', '--layers', '2',
           '--batch-size', '4', '--bptt', '12', '--eval-batch-size', '5', '--epochs', '1',
           '--lr', '1', '--clip', '5', '--init', 'uniform', '--init-range', '0.3',
           '--max-vocab', '400', '--threads', '1', '--save', out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = json.load(open(os.path.join(out, 'result.json')))
    os.remove(os.path.join(out, 'result.json'))
    expected = dict(columns=5, bptt=12, perplexity=result['epochs'][-1]['valid_ppl'],
                    tokens=result['epochs'][-1]['valid_tokens'], command=' '.join(cmd[1:]).replace(ROOT + os.sep, ''))
    json.dump(expected, open(os.path.join(out, 'expected.json'), 'w'), indent=1)


class RNNModel(nn.Module):
    """word_language_model's RNNModel with rnn_type LSTM and tie_weights."""

    def __init__(self, ntoken, ninp, nhid, nlayers):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def rnnmodel_fixture(train_lines, valid_lines):
    out = os.path.join(OUT, 'rnnmodel')
    os.makedirs(out, exist_ok=True)
    words, ids = [], {}
    for line in train_lines + valid_lines:  # word_language_model's Corpus: every split
        for w in line.split() + ['<eos>']:
            if w not in ids:
                ids[w] = len(words)
                words.append(w)
    torch.manual_seed(3)
    model = RNNModel(len(words), 20, 20, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    model.eval()
    data = torch.tensor([ids[w] for line in valid_lines for w in line.split() + ['<eos>']])
    bsz, bptt = 10, 35
    nrows = data.size(0) // bsz
    data = data[:nrows * bsz].view(bsz, -1).t().contiguous()  # batchify
    total, hidden = 0.0, None
    with torch.no_grad():
        for i in range(0, nrows - 1, bptt):
            n = min(bptt, nrows - 1 - i)
            logits, hidden = model(data[i:i + n], hidden)
            total += F.cross_entropy(logits.view(-1, len(words)), data[i + 1:i + 1 + n].reshape(-1),
                                     reduction='sum').item()
    tokens = (nrows - 1) * bsz
    state = {'module.' + k: v for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(out, 'model.pt'))
    write_text(words, os.path.join(out, 'vocab.txt'))
    expected = dict(columns=bsz, bptt=bptt, perplexity=math.exp(total / tokens), tokens=tokens)
    json.dump(expected, open(os.path.join(out, 'expected.json'), 'w'), indent=1)


def main():
    lines = [l for l in open(os.path.join(ROOT, 'assets', 'tinyshakespeare.txt')).read().splitlines()
             if l.strip()]
    os.makedirs(OUT, exist_ok=True)
    train, valid = lines[:600], lines[600:700]
    write_text(train, os.path.join(OUT, 'train.txt'))
    write_text(valid, os.path.join(OUT, 'valid.txt'))
    torch_lm_fixture(os.path.join(OUT, 'train.txt'), os.path.join(OUT, 'valid.txt'))
    rnnmodel_fixture(train, valid)


if __name__ == '__main__':
    main()
