"""Writes a text as one whitespace-separated token per character, for the PyTorch reference.

lstm-lm --tokenizer char reads each line's Unicode characters (spaces included) and ends it with
<eos>, keeping blank lines. torch_lm.py reads whitespace-separated tokens, so this writes each
line's characters separated by spaces, a whitespace character as <U+XXXX> (the space is
<U+0020>); with `torch_lm.py --keep-empty` the token stream is then the same as lstm-lm's.

    python reference/spaced_chars.py IN OUT
"""
import sys


def spaced(line):
    return ' '.join(f'<U+{ord(c):04X}>' if c.isspace() else c for c in line)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding='utf-8') as f:
        # str.splitlines also splits at \r, \v, \f and others; lstm-lm (Rust's str::lines) splits
        # at \n only, dropping the \r of \r\n. Split the same way.
        lines = [ln[:-1] if ln.endswith('\r') else ln for ln in f.read().split('\n')]
    if lines and lines[-1] == '':
        lines.pop()
    with open(dst, 'w', encoding='utf-8') as f:
        for ln in lines:
            f.write(spaced(ln) + '\n')


if __name__ == '__main__':
    main()
