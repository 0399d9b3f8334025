//! The vocabulary: token <-> id, built from the training split, saved with the run.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// Padding: fills short sentences up to their bucket length. Never a target, never counted.
pub const PAD: &str = "<pad>";
/// End of sentence: appended to every line, predicted and counted like a word.
pub const EOS: &str = "<eos>";
/// Stands for every token that is not in the vocabulary.
pub const UNK: &str = "<unk>";

/// Id of [`PAD`].
pub const PAD_ID: usize = 0;
/// Id of [`EOS`].
pub const EOS_ID: usize = 1;
/// Id of [`UNK`].
pub const UNK_ID: usize = 2;

/// A word-level vocabulary with deterministic ids.
///
/// Ids 0, 1, 2 are [`PAD`], [`EOS`] and [`UNK`]; words follow in order of decreasing training
/// frequency, ties broken by first appearance, so the same training text always gives the same
/// ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, usize, foldhash::fast::FixedState>,
}

impl Vocab {
    /// Builds the vocabulary of `sentences` (the training split).
    ///
    /// `max_size` caps the vocabulary, specials included (0 = no cap); the least frequent words
    /// beyond it map to [`UNK`].
    pub fn build<'a, S>(sentences: S, max_size: usize) -> Self
    where
        S: IntoIterator<Item = &'a [String]>,
    {
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut order = 0usize;
        for sentence in sentences {
            for word in sentence {
                let entry = counts.entry(word.as_str()).or_insert_with(|| {
                    order += 1;
                    (0, order)
                });
                entry.0 += 1;
            }
        }
        let words = counts
            .into_iter()
            .map(|(w, (count, first))| (w.to_owned(), count as u64, first as u64))
            .collect();
        Self::from_counts(words, max_size)
    }

    /// The vocabulary of words counted in a training text: `(word, count, first)`, where
    /// `first` orders the words by their first appearance. Words are ranked by decreasing
    /// count, ties by first appearance; `max_size` caps the vocabulary as in [`Vocab::build`].
    pub fn from_counts(mut words: Vec<(String, u64, u64)>, max_size: usize) -> Self {
        words.retain(|(w, _, _)| ![PAD, EOS, UNK].contains(&w.as_str()));
        words.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        if max_size > 0 {
            words.truncate(max_size.saturating_sub(3));
        }
        let tokens = [PAD, EOS, UNK]
            .into_iter()
            .map(str::to_owned)
            .chain(words.into_iter().map(|(w, _, _)| w))
            .collect();
        Self::from_tokens(tokens)
    }

    fn from_tokens(tokens: Vec<String>) -> Self {
        let mut ids = HashMap::with_capacity_and_hasher(tokens.len(), Default::default());
        ids.extend(tokens.iter().enumerate().map(|(i, t)| (t.clone(), i)));
        Self { tokens, ids }
    }

    /// Number of ids, specials included: the model's input and output size.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false: a vocabulary holds at least the three specials.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of `token`, or [`UNK_ID`] when it is not in the vocabulary.
    pub fn id(&self, token: &str) -> usize {
        self.ids.get(token).copied().unwrap_or(UNK_ID)
    }

    /// The id of `token`, if it has one of its own.
    pub fn get(&self, token: &str) -> Option<usize> {
        self.ids.get(token).copied()
    }

    /// Whether `token` has an id of its own.
    pub fn contains(&self, token: &str) -> bool {
        self.ids.contains_key(token)
    }

    /// The token of `id`, if `id` is in range.
    pub fn token(&self, id: usize) -> Option<&str> {
        self.tokens.get(id).map(String::as_str)
    }

    /// Encodes one sentence: its words' ids followed by [`EOS_ID`].
    pub fn encode(&self, words: &[String]) -> Vec<usize> {
        words
            .iter()
            .map(|w| self.id(w))
            .chain(std::iter::once(EOS_ID))
            .collect()
    }

    /// Decodes ids to tokens, joined by spaces; unknown ids read `<?>`.
    pub fn decode(&self, ids: &[usize]) -> String {
        ids.iter()
            .map(|&i| self.token(i).unwrap_or("<?>"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Saves one token per line; the line number is the id.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = self.tokens.join("\n");
        text.push('\n');
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    /// Loads a vocabulary written by [`Vocab::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("cannot read vocabulary", path, e))?;
        let tokens: Vec<String> = text.lines().map(str::to_owned).collect();
        Self::from_ordered(tokens).map_err(|problem| Error::BadRun {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            problem: format!("{}: {problem}", path.display()),
        })
    }

    /// The vocabulary whose id `i` is `tokens[i]` (a subword model's own order); it must start
    /// with the three specials and hold no token twice.
    pub fn from_ordered(tokens: Vec<String>) -> std::result::Result<Self, String> {
        if tokens.len() < 3
            || tokens[PAD_ID] != PAD
            || tokens[EOS_ID] != EOS
            || tokens[UNK_ID] != UNK
        {
            return Err(format!(
                "not a vocabulary file (it must start with {PAD}, {EOS}, {UNK})"
            ));
        }
        let vocab = Self::from_tokens(tokens);
        if vocab.ids.len() != vocab.tokens.len() {
            return Err("a token appears twice".into());
        }
        Ok(vocab)
    }
}

/// A vocabulary in another tool's order (`tokens[i]` is its id `i`, e.g. PyTorch's), mapped
/// into lstm-lm's layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ForeignVocab {
    /// The vocabulary in lstm-lm's layout: [`PAD`], [`EOS`], [`UNK`], then the other tokens in
    /// the foreign order.
    pub vocab: Vocab,
    /// For each lstm-lm id, the foreign id it comes from; `None` for a special the foreign
    /// vocabulary did not have.
    pub rows: Vec<Option<usize>>,
}

impl ForeignVocab {
    /// Maps `tokens` (a foreign vocabulary, one token per id) into lstm-lm's layout. The
    /// foreign vocabulary must hold [`EOS`] (each line's end) and no token twice; [`PAD`] and
    /// [`UNK`] are taken where present and otherwise become rows it never had.
    pub fn map(tokens: &[String]) -> std::result::Result<Self, String> {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = seen.insert(t.as_str(), i) {
                return Err(format!(
                    "the token {t:?} appears twice (lines {} and {})",
                    first + 1,
                    i + 1
                ));
            }
        }
        if !seen.contains_key(EOS) {
            return Err(format!(
                "it has no {EOS}: lstm-lm ends every line with {EOS}, so the model must know the \
                 token it was trained to end lines with; name it {EOS} in the vocabulary file"
            ));
        }
        let specials = [PAD, EOS, UNK];
        let mut rows: Vec<Option<usize>> = specials.iter().map(|s| seen.get(s).copied()).collect();
        let mut ordered: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        for (i, t) in tokens.iter().enumerate() {
            if !specials.contains(&t.as_str()) {
                rows.push(Some(i));
                ordered.push(t.clone());
            }
        }
        Ok(Self {
            vocab: Vocab::from_tokens(ordered),
            rows,
        })
    }

    /// The specials the foreign vocabulary did not have (rows it never had).
    pub fn missing(&self) -> Vec<&str> {
        (0..3)
            .filter(|&i| self.rows[i].is_none())
            .filter_map(|i| self.vocab.token(i))
            .collect()
    }

    /// Number of tokens the foreign vocabulary had (rows of the foreign model).
    pub fn foreign_len(&self) -> usize {
        self.rows.iter().flatten().count()
    }

    /// Whether every id keeps its foreign id (the foreign vocabulary was lstm-lm's layout).
    pub fn is_identity(&self) -> bool {
        self.rows.iter().enumerate().all(|(i, r)| *r == Some(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sents(text: &str) -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn ids_follow_frequency_then_first_appearance() {
        let s = sents("b a c\na c\nc d");
        let v = Vocab::build(s.iter().map(Vec::as_slice), 0);
        // c: 3, a: 2, b: 1 (first), d: 1
        let order: Vec<_> = (3..v.len()).map(|i| v.token(i).unwrap()).collect();
        assert_eq!(order, ["c", "a", "b", "d"]);
        assert_eq!(v.len(), 7);
    }

    #[test]
    fn cap_maps_rare_words_to_unk_and_specials_are_not_duplicated() {
        let s = sents("<unk> x x y z");
        let v = Vocab::build(s.iter().map(Vec::as_slice), 4);
        assert_eq!(v.len(), 4);
        assert_eq!(v.id("x"), 3);
        assert_eq!(v.id("y"), UNK_ID);
        assert_eq!(v.id("<unk>"), UNK_ID);
        assert_eq!(v.encode(&["x".into(), "q".into()]), vec![3, UNK_ID, EOS_ID]);
    }

    #[test]
    fn save_load_round_trip_and_rejects_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = sents("the cat sat\non the mat");
        let v = Vocab::build(s.iter().map(Vec::as_slice), 0);
        let path = dir.path().join("vocab.txt");
        v.save(&path).unwrap();
        assert_eq!(Vocab::load(&path).unwrap(), v);
        std::fs::write(&path, "hello\nworld\n").unwrap();
        let err = Vocab::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a vocabulary file"), "{err}");
    }

    #[test]
    fn a_foreign_vocabulary_maps_into_lstm_lm_layout() {
        let t = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        // PyTorch's order: first appearance, no <pad>, <eos> and <unk> wherever they fell.
        let f = ForeignVocab::map(&t("the <eos> cat <unk> sat")).unwrap();
        assert_eq!(
            f.vocab.decode(&[0, 1, 2, 3, 4, 5]),
            "<pad> <eos> <unk> the cat sat"
        );
        assert_eq!(
            f.rows,
            vec![None, Some(1), Some(3), Some(0), Some(2), Some(4)]
        );
        assert_eq!(f.missing(), vec![PAD]);
        assert_eq!(f.foreign_len(), 5);
        assert!(!f.is_identity());
        let f = ForeignVocab::map(&t("<eos> a")).unwrap();
        assert_eq!(f.missing(), vec![PAD, UNK]);
        // lstm-lm's own layout maps to itself.
        let f = ForeignVocab::map(&t("<pad> <eos> <unk> a b")).unwrap();
        assert!(f.is_identity() && f.missing().is_empty());
        let e = ForeignVocab::map(&t("a b")).unwrap_err();
        assert!(e.contains("no <eos>"), "{e}");
        let e = ForeignVocab::map(&t("<eos> a b a")).unwrap_err();
        assert!(e.contains("\"a\" appears twice (lines 2 and 4)"), "{e}");
    }
}
