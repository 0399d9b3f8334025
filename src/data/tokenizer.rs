//! How a line of text becomes tokens: words (whitespace-separated), characters, or byte-level
//! BPE subwords.
//!
//! Every tokenizer ends each sentence with `<eos>`; what a sentence is differs:
//! - [`Tokenizer::Word`]: a line's whitespace-separated words; blank lines are skipped (PTB's
//!   format, the reference's behaviour).
//! - [`Tokenizer::Char`]: a line's Unicode scalar values, spaces included; the line end is the
//!   `<eos>` token, and a blank line is a sentence of only `<eos>`, so the text is kept whole.
//! - [`Tokenizer::Bpe`]: a line's byte-level BPE pieces (Hugging Face's `tokenizers`, learned on
//!   the training split, its `tokenizer.json` kept with the run); blank lines kept as for
//!   characters. The BPE model's ids are the vocabulary's: `<pad>`, `<eos>`, `<unk>` are its
//!   special tokens 0, 1, 2, so `<unk>` written in a text is the unknown token, as for words.
//!
//! A text's *characters* (the denominator of bits per character) are counted from the raw text
//! the same way for every tokenizer: each line's Unicode scalar values plus one for its line
//! end (CRLF counts once), blank lines included.

use std::path::Path;
use std::sync::Arc;

use super::vocab::{Vocab, EOS, UNK, UNK_ID};
use crate::error::{Error, Result};

/// Bytes of a line that BPE learns from at once; a longer line goes in pieces cut by
/// [`line_cut`].
pub const PIECE_BYTES: usize = 1 << 20;

/// Bytes of a line that BPE encodes at once, in pieces cut by [`line_cut`]: an encoding holds
/// some 100 bytes a piece, and pieces this small stay in the core's caches, as the lines of most
/// texts do.
pub const ENCODE_PIECE_BYTES: usize = 16 << 10;

/// Where a piece of a line may end so that every tokenizer reads the pieces as it reads the
/// whole line: before the last single space between two other bytes that are not whitespace
/// (words split there; characters anywhere; byte-level BPE attaches such a space to the word
/// after it). `None` when `line` has no such space.
pub fn line_cut(line: &[u8]) -> Option<usize> {
    let blank = |b: u8| b.is_ascii_whitespace();
    memchr::memrchr_iter(b' ', line)
        .find(|&i| i > 0 && i + 1 < line.len() && !blank(line[i - 1]) && !blank(line[i + 1]))
}

/// `line` in pieces of at most `max` bytes, each ending at a [`line_cut`] of its first `max`
/// bytes (a piece with no such cut runs on to the line's end), so that every tokenizer reads
/// the pieces one after the other as it reads the whole line.
fn pieces(line: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = line;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let at = match line_cut(&rest.as_bytes()[..rest.len().min(max)]) {
            Some(at) if rest.len() > max => at,
            _ => rest.len(),
        };
        let (piece, tail) = rest.split_at(at);
        rest = tail;
        Some(piece)
    })
}

/// The tokenizer a run reads its text with; saved in `config.json`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Tokenizer {
    /// Whitespace-separated words; blank lines skipped.
    #[default]
    Word,
    /// Unicode characters, the space included; each line end is `<eos>`; blank lines kept.
    Char,
    /// Byte-level BPE learned on the training text (`--max-vocab` pieces, specials included;
    /// 8,000 when it is 0); blank lines kept.
    Bpe,
}

impl Tokenizer {
    /// The name in flags, configs and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Word => "word",
            Tokenizer::Char => "char",
            Tokenizer::Bpe => "bpe",
        }
    }

    /// Calls `f` with each token of `line` (a line without its line end); returns whether the
    /// line is a sentence (then `<eos>` follows its tokens). BPE pieces come from a trained
    /// [`Codec`]; here BPE cuts nothing.
    pub fn for_each_token<'a>(self, line: &'a str, mut f: impl FnMut(&'a str)) -> bool {
        match self {
            Tokenizer::Bpe => true,
            Tokenizer::Word => {
                let mut any = false;
                for word in line.split_whitespace() {
                    f(word);
                    any = true;
                }
                any
            }
            Tokenizer::Char => {
                for (i, c) in line.char_indices() {
                    f(&line[i..i + c.len_utf8()]);
                }
                true
            }
        }
    }

    /// The tokens of a whole text, in order (sentence ends not included).
    pub fn tokens_of(self, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for line in text.lines() {
            self.for_each_token(line, |t| out.push(t));
        }
        out
    }
}

/// The file a BPE model is kept in, in the prepared cache and in the run folder.
pub const BPE_FILE: &str = "tokenizer.json";
/// BPE vocabulary size when `--max-vocab` is 0.
pub const DEFAULT_BPE_VOCAB: usize = 8_000;

/// A tokenizer ready to cut and rebuild text: words or characters, or a trained BPE model.
#[derive(Clone)]
pub enum Codec {
    /// Whitespace-separated words.
    Word,
    /// Unicode characters.
    Char,
    /// A trained byte-level BPE model whose ids are the vocabulary's.
    Bpe(Arc<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().name())
    }
}

impl Codec {
    /// The kind of tokenizer.
    pub fn kind(&self) -> Tokenizer {
        match self {
            Codec::Word => Tokenizer::Word,
            Codec::Char => Tokenizer::Char,
            Codec::Bpe(_) => Tokenizer::Bpe,
        }
    }

    /// The codec of `kind`; BPE reads its model from [`BPE_FILE`] in `dir`.
    pub fn load(kind: Tokenizer, dir: &Path) -> Result<Self> {
        match kind {
            Tokenizer::Word => Ok(Codec::Word),
            Tokenizer::Char => Ok(Codec::Char),
            Tokenizer::Bpe => {
                let path = dir.join(BPE_FILE);
                let model = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Corpus {
                    path: path.clone(),
                    problem: format!("not a readable BPE tokenizer ({e})"),
                })?;
                Ok(Codec::Bpe(Arc::new(model)))
            }
        }
    }

    /// Appends the ids of `line`'s tokens to `ids` (`<eos>` not included); returns whether the
    /// line is a sentence and how many of its tokens are not in `vocab`.
    pub fn encode_line(&self, vocab: &Vocab, line: &str, ids: &mut Vec<u32>) -> (bool, usize) {
        match self {
            Codec::Bpe(model) => {
                // Byte-level BPE cuts any text; the model's ids are the vocabulary's. A long
                // line goes in pieces: an encoding holds some 100 bytes per piece.
                for piece in pieces(line, ENCODE_PIECE_BYTES) {
                    if let Ok(encoding) = model.encode(piece, false) {
                        ids.extend_from_slice(encoding.get_ids());
                    }
                }
                (true, 0)
            }
            _ => {
                let mut unknown = 0;
                let sentence = self.kind().for_each_token(line, |token| {
                    let id = vocab.get(token).unwrap_or_else(|| {
                        unknown += 1;
                        UNK_ID
                    });
                    ids.push(id as u32);
                });
                (sentence, unknown)
            }
        }
    }

    /// The tokens of `text` (a prompt), as strings of the vocabulary; line ends not included.
    pub fn tokens_of(&self, vocab: &Vocab, text: &str) -> Vec<String> {
        match self {
            Codec::Bpe(_) => {
                let mut ids = Vec::new();
                for line in text.lines() {
                    self.encode_line(vocab, line, &mut ids);
                }
                ids.iter()
                    .map(|&i| vocab.token(i as usize).unwrap_or(UNK).to_string())
                    .collect()
            }
            _ => self
                .kind()
                .tokens_of(text)
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    /// Writes the tokens of `line` (no line end) to `out` separated by spaces, a whitespace
    /// character inside a token written `<U+XXXX>`, so that splitting the output at whitespace
    /// gives the tokens back; no line end is written. The line goes in pieces of
    /// [`ENCODE_PIECE_BYTES`] cut by [`line_cut`], so that its tokens are never all held at
    /// once (a text on one line is one line).
    pub fn write_spaced(
        &self,
        vocab: &Vocab,
        line: &str,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        self.write_spaced_piece(vocab, line, &mut true, out)
    }

    /// [`Codec::write_spaced`] for a text's lines in pieces cut at [`line_cut`]s, each with
    /// whether its line ends after it (as [`super::corpus::LinePieces`] hands them out): each
    /// line's tokens, then a line end. What `lstm-lm tokenize` writes.
    pub fn write_spaced_lines(
        &self,
        vocab: &Vocab,
        pieces: impl IntoIterator<Item = Result<(String, bool)>>,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let written = |e| Error::io("cannot write the tokens to", "the output", e);
        let mut first = true;
        for piece in pieces {
            let (piece, ends) = piece?;
            self.write_spaced_piece(vocab, &piece, &mut first, out)
                .map_err(written)?;
            if ends {
                out.write_all(b"\n").map_err(written)?;
                first = true;
            }
        }
        Ok(())
    }

    /// [`Codec::write_spaced`] for a piece of a line cut at a [`line_cut`], one after the
    /// other: `first` is true for a line's first piece and stays false once a token of the
    /// line was written.
    fn write_spaced_piece(
        &self,
        vocab: &Vocab,
        piece: &str,
        first: &mut bool,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        for piece in pieces(piece, ENCODE_PIECE_BYTES) {
            for token in self.tokens_of(vocab, piece) {
                if !*first {
                    out.write_all(b" ")?;
                }
                *first = false;
                if !token.contains(char::is_whitespace) {
                    out.write_all(token.as_bytes())?;
                    continue;
                }
                for c in token.chars() {
                    if c.is_whitespace() {
                        write!(out, "<U+{:04X}>", c as u32)?;
                    } else {
                        out.write_all(c.encode_utf8(&mut [0; 4]).as_bytes())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Text from tokens: words joined by spaces, characters as they are, BPE pieces decoded
    /// to their bytes (invalid UTF-8 shown as U+FFFD, never printed broken); `<eos>` becomes
    /// a line end.
    pub fn detokenize<'a>(
        &self,
        vocab: &Vocab,
        tokens: impl IntoIterator<Item = &'a str>,
    ) -> String {
        let mut stream = TextStream::new(self, vocab);
        let mut out: String = tokens.into_iter().map(|t| stream.push(t)).collect();
        out += &stream.finish();
        out
    }
}

/// Text from tokens as they come (to print while generating): pushed one by one, the pieces
/// join to what [`Codec::detokenize`] returns for them all. A BPE piece that ends inside a
/// UTF-8 character is held until the character is complete.
pub struct TextStream<'a> {
    codec: &'a Codec,
    vocab: &'a Vocab,
    line_start: bool,
    /// Whether the text so far is empty or ends with a line end.
    at_line_end: bool,
    /// BPE ids not shown yet: their bytes end inside a character.
    pending: Vec<u32>,
}

impl<'a> TextStream<'a> {
    /// An empty text cut by `codec`, whose ids are `vocab`'s.
    pub fn new(codec: &'a Codec, vocab: &'a Vocab) -> Self {
        Self {
            codec,
            vocab,
            line_start: true,
            at_line_end: true,
            pending: Vec::new(),
        }
    }

    /// The text `token` adds: a word with the space before it, a character, the characters a
    /// BPE piece completes (empty while one is incomplete), or a line end for `<eos>`.
    pub fn push(&mut self, token: &str) -> String {
        let text = if token == EOS {
            let mut text = self.flush();
            text.push('\n');
            self.line_start = true;
            text
        } else if let Codec::Bpe(model) = self.codec {
            self.pending
                .push(self.vocab.get(token).unwrap_or(UNK_ID) as u32);
            let text = model.decode(&self.pending, false).unwrap_or_default();
            if text.ends_with(char::REPLACEMENT_CHARACTER) {
                return String::new();
            }
            self.pending.clear();
            text
        } else {
            let space = self.codec.kind() != Tokenizer::Char && !self.line_start;
            self.line_start = false;
            if space {
                format!(" {token}")
            } else {
                token.to_string()
            }
        };
        self.note(text)
    }

    /// The rest: bytes of an incomplete character, shown as U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = self.flush();
        self.note(text)
    }

    /// [`finish`](Self::finish), then a line end unless the text is empty or ends with one.
    pub fn finish_line(&mut self) -> String {
        let mut text = self.finish();
        if !self.at_line_end {
            text.push('\n');
            self.at_line_end = true;
        }
        text
    }

    fn flush(&mut self) -> String {
        let Codec::Bpe(model) = self.codec else {
            return String::new();
        };
        let text = match self.pending.is_empty() {
            true => String::new(),
            false => model.decode(&self.pending, false).unwrap_or_default(),
        };
        self.pending.clear();
        text
    }

    fn note(&mut self, text: String) -> String {
        if let Some(last) = text.chars().last() {
            self.at_line_end = last == '\n';
        }
        text
    }
}

/// Words of `text` as a word model counts its tokens: the whitespace-separated words, plus one
/// end of sentence for each line that has any (the denominator of a per-word perplexity).
pub fn count_words(text: &str) -> u64 {
    text.lines()
        .map(|l| match l.split_whitespace().count() {
            0 => 0,
            n => n as u64 + 1,
        })
        .sum()
}

/// Characters of `text` as the module docs count them: each line's Unicode scalar values plus
/// one for its line end.
pub fn count_chars(text: &str) -> u64 {
    text.lines().map(|l| l.chars().count() as u64 + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line cut where `line_cut` says gives the words and characters of the whole line, and
    /// BPE's pieces too (checked against a learned model in `prepare`); no cut next to other
    /// whitespace or at the ends.
    #[test]
    fn a_line_cut_between_words_reads_as_the_whole_line() {
        let line = "ab,  cd\tef 12 g\u{3000}h é 😀 'sx";
        let mut rest = line;
        let mut pieces = Vec::new();
        while let Some(at) = line_cut(rest.as_bytes()) {
            pieces.push(&rest[at..]);
            rest = &rest[..at];
        }
        pieces.push(rest);
        pieces.reverse();
        assert_eq!(
            pieces,
            ["ab,  cd\tef", " 12", " g\u{3000}h", " é", " 😀", " 'sx"]
        );
        for tokenizer in [Tokenizer::Word, Tokenizer::Char] {
            let whole = tokenizer.tokens_of(line);
            let cut: Vec<&str> = pieces.iter().flat_map(|p| tokenizer.tokens_of(p)).collect();
            assert_eq!(cut, whole, "{tokenizer:?}");
        }
        for no_cut in ["abc", " ab", "ab ", "a  b", "a\t b", ""] {
            assert_eq!(line_cut(no_cut.as_bytes()), None, "{no_cut:?}");
        }
    }

    /// Characters keep spaces, non-ASCII letters and blank lines; words drop blank lines; CRLF
    /// ends a line once; detokenizing characters gives the text back.
    #[test]
    fn tokens_of_words_and_characters() {
        let text = "Héllo, wörld.\r\n\n  ünï 😀\n";
        assert_eq!(
            Tokenizer::Word.tokens_of(text),
            ["Héllo,", "wörld.", "ünï", "😀"]
        );
        let chars = Tokenizer::Char.tokens_of(text);
        assert_eq!(chars.len(), 13 + 7);
        assert_eq!(&chars[..3], ["H", "é", "l"]);
        let mut sentences = 0;
        for line in text.lines() {
            sentences += usize::from(Tokenizer::Char.for_each_token(line, |_| {}));
        }
        assert_eq!(sentences, 3, "the blank line is a sentence of characters");
        assert_eq!(count_chars(text), 13 + 1 + 1 + 7 + 1);
        let mut with_ends = Vec::new();
        for line in text.lines() {
            Tokenizer::Char.for_each_token(line, |t| with_ends.push(t));
            with_ends.push("<eos>");
        }
        let vocab = Vocab::from_counts(Vec::new(), 0);
        assert_eq!(
            Codec::Char.detokenize(&vocab, with_ends),
            text.replace("\r\n", "\n")
        );
        assert_eq!(
            Codec::Word.detokenize(&vocab, ["a", "b", "<eos>", "c"]),
            "a b\nc"
        );
    }
}
