//! Learning a byte-level BPE (the `tokenizers` crate's trainer) on the training lines,
//! streamed from the files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::text::Input;
use crate::data::corpus::trim_line_end;
use crate::data::tokenizer::{line_cut, Codec, BPE_FILE, DEFAULT_BPE_VOCAB, PIECE_BYTES};
use crate::data::vocab::{Vocab, EOS, PAD, UNK};
use crate::error::{Error, Result};

/// Learns a byte-level BPE of `max_vocab` pieces (specials included; [`DEFAULT_BPE_VOCAB`]
/// when 0) on the training lines (held-out ones left out), streamed from the files, and writes
/// it into `dir` as [`BPE_FILE`]. Its ids are the vocabulary's: the specials are its tokens
/// 0, 1, 2.
pub(super) fn train(
    dir: &Path,
    train: &[Input],
    cut: Option<usize>,
    max_vocab: usize,
) -> Result<(Vocab, Codec)> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::normalizers::NormalizerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::PostProcessorWrapper;
    use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, TokenizerBuilder};

    let size = if max_vocab == 0 {
        DEFAULT_BPE_VOCAB
    } else {
        max_vocab
    };
    let path = dir.join(BPE_FILE);
    let failed = |e: tokenizers::Error| Error::Corpus {
        path: train[0].path().to_path_buf(),
        problem: format!("learning the BPE failed: {e}"),
    };
    let mut model = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false).into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .map_err(failed)?;
    let specials = [PAD, EOS, UNK]
        .map(|s| AddedToken::from(s.to_string(), true))
        .to_vec();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let error = Arc::new(std::sync::Mutex::new(None));
    let lines = TrainLines::new(train.to_vec(), cut, error.clone());
    model.train(&mut trainer, lines).map_err(failed)?;
    if let Some(e) = error.lock().expect("line reader lock").take() {
        return Err(e);
    }
    let model: tokenizers::Tokenizer = model.into();
    let got = model.get_vocab_size(true);
    if got < size {
        return Err(Error::Corpus {
            path: train[0].path().to_path_buf(),
            problem: format!(
                "the training text allows only {got} BPE pieces (256 bytes, 3 specials and every \
                 merge of a pair seen twice), fewer than the {size} asked for; pass --max-vocab \
                 {got} or less, or more text"
            ),
        });
    }
    let tokens: Vec<String> = (0..got as u32)
        .map(|i| model.id_to_token(i).unwrap_or_default())
        .collect();
    let vocab = Vocab::from_ordered(tokens).map_err(|problem| Error::Corpus {
        path: path.clone(),
        problem: format!("the learned BPE is not a vocabulary: {problem}"),
    })?;
    let codec = Codec::Bpe(Arc::new(model));
    save_codec(&codec, dir)?;
    Ok((vocab, codec))
}

/// Writes a BPE model into the prepared folder `dir` (words and characters need no file).
pub(super) fn save_codec(codec: &Codec, dir: &Path) -> Result<()> {
    if let Codec::Bpe(model) = codec {
        let path = dir.join(BPE_FILE);
        model.save(&path, true).map_err(|e| Error::Corpus {
            path: path.clone(),
            problem: format!("cannot write the BPE: {e}"),
        })?;
    }
    Ok(())
}

/// The training lines of some inputs, streamed (line ends removed), up to global line `cut`;
/// a line longer than [`PIECE_BYTES`] comes in pieces cut where the tokenizer reads them as it
/// reads the whole line ([`line_cut`]). A read error ends the lines and is left in `error`.
struct TrainLines {
    inputs: std::vec::IntoIter<Input>,
    current: Option<Box<dyn std::io::BufRead + Send>>,
    path: PathBuf,
    /// Lines read, over all inputs, and in the current one.
    line: usize,
    file_line: usize,
    /// The rest of a line after the last piece handed over.
    rest: Vec<u8>,
    cut: Option<usize>,
    error: Arc<std::sync::Mutex<Option<Error>>>,
}

impl TrainLines {
    fn new(
        inputs: Vec<Input>,
        cut: Option<usize>,
        error: Arc<std::sync::Mutex<Option<Error>>>,
    ) -> Self {
        Self {
            inputs: inputs.into_iter(),
            current: None,
            path: PathBuf::new(),
            line: 0,
            file_line: 0,
            rest: Vec::new(),
            cut,
            error,
        }
    }

    fn fail(&mut self, e: Error) -> Option<String> {
        *self.error.lock().expect("line reader lock") = Some(e);
        self.current = None;
        self.inputs = Vec::new().into_iter();
        None
    }

    /// The next line, or piece of a line, of the current input as bytes (`None` at its end).
    fn next_bytes(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::{BufRead, Read};
        let reader = self.current.as_mut().expect("an open input");
        let mut bytes = std::mem::take(&mut self.rest);
        loop {
            let before = bytes.len();
            let n = reader
                .take(PIECE_BYTES as u64)
                .read_until(b'\n', &mut bytes)?;
            if bytes.ends_with(b"\n") || (n == 0 && !bytes.is_empty()) {
                // A whole line (the input's last may lack its end).
                self.line += 1;
                self.file_line += 1;
                trim_line_end(&mut bytes);
                return Ok(Some(bytes));
            }
            if n == 0 {
                return Ok(None);
            }
            if n == PIECE_BYTES {
                // Only the bytes just read, and the two before them, can hold a new cut.
                let from = before.saturating_sub(2);
                if let Some(at) = line_cut(&bytes[from..]) {
                    self.rest = bytes.split_off(from + at);
                    return Ok(Some(bytes));
                }
            }
        }
    }
}

impl Iterator for TrainLines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.cut.is_some_and(|c| self.line >= c) {
            return None;
        }
        loop {
            if self.current.is_none() {
                let input = self.inputs.next()?;
                self.path = input.path().to_path_buf();
                self.file_line = 0;
                match input.open() {
                    Ok(r) => {
                        self.current = Some(Box::new(std::io::BufReader::with_capacity(1 << 20, r)))
                    }
                    Err(e) => return self.fail(e),
                }
            }
            let bytes = match self.next_bytes() {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    self.current = None;
                    continue;
                }
                Err(e) => {
                    let path = self.path.clone();
                    return self.fail(Error::io("cannot read corpus file", &path, e));
                }
            };
            return match String::from_utf8(bytes) {
                Ok(line) => Some(line),
                Err(_) => {
                    // A piece of a line is named by the line it is in.
                    let line = self.file_line + usize::from(!self.rest.is_empty());
                    let problem =
                        format!("line {line}: not valid UTF-8; convert the file to UTF-8");
                    let path = self.path.clone();
                    self.fail(Error::Corpus { path, problem })
                }
            };
        }
    }
}
