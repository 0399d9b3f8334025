//! `cargo xtask gen-corpus`: a seeded, Zipf-distributed corpus of any size, for benchmarking
//! data preparation and large vocabularies without committing or downloading large files.
//!
//! Token `k` of the vocabulary (`k = 1` the most frequent) is drawn with probability
//! proportional to `1 / k^s` (Zipf's law; `s` = `--exponent`, 1 by default, close to English
//! word counts). Its spelling is `k` in bijective base 26 (`a` .. `z`, `aa`, `ab`, ...), so
//! frequent words are short. Sentence lengths are uniform on `1 ..= 2m - 1` tokens (mean `m`,
//! 21 by default, about PTB's). The random numbers come from SplitMix64, written out here rather
//! than taken from `rand`, whose generators may change between versions: a seed gives the same
//! file on every machine, for good.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Tokens in all, sentence ends not counted.
    pub tokens: u64,
    /// Distinct words at most.
    pub vocab: usize,
    /// Zipf exponent `s`.
    pub exponent: f64,
    /// Mean sentence length in tokens.
    pub mean_length: usize,
    /// Seed.
    pub seed: u64,
}

/// SplitMix64 (Steele, Lea and Flood 2014): a 64-bit state, one add and three xor-shift
/// multiplies a draw.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The spelling of 1-based rank `k`: bijective base 26.
pub fn word(mut k: usize) -> String {
    let mut letters = Vec::new();
    while k > 0 {
        k -= 1;
        letters.push(b'a' + (k % 26) as u8);
        k /= 26;
    }
    letters.reverse();
    String::from_utf8(letters).expect("ascii letters")
}

/// The cumulative distribution over ranks `1..=vocab`, normalised to end at 1.
fn zipf_cdf(vocab: usize, exponent: f64) -> Vec<f64> {
    let mut cdf: Vec<f64> = Vec::with_capacity(vocab);
    let mut sum = 0.0;
    for k in 1..=vocab {
        sum += (k as f64).powf(-exponent);
        cdf.push(sum);
    }
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

/// Writes the corpus of `spec` to `out`, one sentence a line, atomically (a temporary file
/// renamed into place at the end), reporting progress on stderr.
pub fn generate(spec: &Spec, out: &Path) -> Result<()> {
    if spec.vocab == 0 || spec.mean_length == 0 || spec.exponent.is_nan() || spec.exponent <= 0.0 {
        bail!("--vocab and --mean-length must be at least 1 and --exponent above 0");
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let name = out.file_name().context("--out needs a file name")?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_to(spec, &tmp).and_then(|()| {
        std::fs::rename(&tmp, out).with_context(|| format!("cannot rename to {}", out.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_to(spec: &Spec, path: &Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let cdf = zipf_cdf(spec.vocab, spec.exponent);
    let words: Vec<String> = (1..=spec.vocab).map(word).collect();
    let mut rng = SplitMix64(spec.seed);
    let longest = 2 * spec.mean_length as u64 - 1;
    let (start, mut written, mut bytes) = (Instant::now(), 0u64, 0u64);
    let mut next_report = 10_000_000u64;
    while written < spec.tokens {
        let len = (1 + rng.next() % longest).min(spec.tokens - written);
        for i in 0..len {
            let u = rng.unit();
            let rank = cdf.partition_point(|&c| c <= u).min(spec.vocab - 1);
            let word = &words[rank];
            if i > 0 {
                w.write_all(b" ")?;
            }
            w.write_all(word.as_bytes())?;
            bytes += word.len() as u64 + 1;
        }
        w.write_all(b"\n")?;
        written += len;
        if written >= next_report {
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{written} of {} tokens, {:.0} MB, {:.0} MB/s",
                spec.tokens,
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / secs
            );
            next_report += 10_000_000;
        }
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tokens: u64, vocab: usize) -> Spec {
        Spec {
            tokens,
            vocab,
            exponent: 1.0,
            mean_length: 21,
            seed: 7,
        }
    }

    #[test]
    fn ranks_are_spelled_in_bijective_base_26() {
        let spelled: Vec<String> = [1, 2, 26, 27, 52, 53, 702, 703].map(word).to_vec();
        assert_eq!(spelled, ["a", "b", "z", "aa", "az", "ba", "zz", "aaa"]);
    }

    /// The same seed writes the same bytes; the token count is exact; no more distinct words
    /// than the vocabulary; the most frequent word's share is Zipf's `1 / H_V` (within 5%).
    #[test]
    fn a_seed_gives_one_file_with_zipf_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        generate(&spec(200_000, 1000), &a).unwrap();
        generate(&spec(200_000, 1000), &b).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text, std::fs::read_to_string(&b).unwrap());
        let tokens: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(tokens.len(), 200_000);
        let mut counts = std::collections::HashMap::new();
        for t in &tokens {
            *counts.entry(*t).or_insert(0usize) += 1;
        }
        assert!(counts.len() <= 1000);
        let harmonic: f64 = (1..=1000).map(|k| 1.0 / k as f64).sum();
        let share = counts["a"] as f64 / tokens.len() as f64;
        assert!(
            (share * harmonic - 1.0).abs() < 0.05,
            "share of `a`: {share}"
        );
        let lines: Vec<usize> = text.lines().map(|l| l.split(' ').count()).collect();
        let mean = lines.iter().sum::<usize>() as f64 / lines.len() as f64;
        assert!((mean - 21.0).abs() < 0.5, "mean sentence length {mean}");
        assert!(lines.iter().all(|&n| (1..=41).contains(&n)));
        // Another seed, another file; no temporary file is left behind.
        generate(
            &Spec {
                seed: 8,
                ..spec(200_000, 1000)
            },
            &b,
        )
        .unwrap();
        assert_ne!(text, std::fs::read_to_string(&b).unwrap());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = generate(&spec(10, 0), &dir.path().join("x.txt")).unwrap_err();
        assert!(e.to_string().contains("--vocab"), "{e}");
        assert!(!dir.path().join("x.txt").exists());
    }
}
