//! How a line of text becomes tokens: words (whitespace-separated) or characters.
//!
//! Every tokenizer ends each sentence with `<eos>`; what a sentence is differs:
//! - [`Tokenizer::Word`]: a line's whitespace-separated words; blank lines are skipped (PTB's
//!   format, the reference's behaviour).
//! - [`Tokenizer::Char`]: a line's Unicode scalar values, spaces included; the line end is the
//!   `<eos>` token, and a blank line is a sentence of only `<eos>`, so the text is kept whole.
//!
//! A text's *characters* (the denominator of bits per character) are counted from the raw text
//! the same way for every tokenizer: each line's Unicode scalar values plus one for its line
//! end (CRLF counts once), blank lines included.

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
}

impl Tokenizer {
    /// The name in flags, configs and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Word => "word",
            Tokenizer::Char => "char",
        }
    }

    /// Calls `f` with each token of `line` (a line without its line end); returns whether the
    /// line is a sentence (then `<eos>` follows its tokens).
    pub fn for_each_token<'a>(self, line: &'a str, mut f: impl FnMut(&'a str)) -> bool {
        match self {
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

    /// Text from tokens as this tokenizer cuts it: words joined by spaces, characters as they
    /// are; `<eos>` becomes a line end.
    pub fn detokenize<'a>(self, tokens: impl IntoIterator<Item = &'a str>) -> String {
        let mut out = String::new();
        let mut line_start = true;
        for t in tokens {
            if t == super::vocab::EOS {
                out.push('\n');
                line_start = true;
                continue;
            }
            if self == Tokenizer::Word && !line_start {
                out.push(' ');
            }
            out.push_str(t);
            line_start = false;
        }
        out
    }
}

/// Characters of `text` as the module docs count them: each line's Unicode scalar values plus
/// one for its line end.
pub fn count_chars(text: &str) -> u64 {
    text.lines().map(|l| l.chars().count() as u64 + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            Tokenizer::Char.detokenize(with_ends),
            text.replace("\r\n", "\n")
        );
        assert_eq!(
            Tokenizer::Word.detokenize(["a", "b", "<eos>", "c"]),
            "a b\nc"
        );
    }
}
