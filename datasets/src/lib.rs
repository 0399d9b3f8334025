//! The named datasets of lstm-lm and their file layout: one definition that the trainer (which
//! reads them) and `cargo xtask fetch-data` (which downloads them) share. No dependencies, so
//! xtask uses it without compiling Burn.
//!
//! A data folder (`data/` by default) holds each dataset in a folder of its name:
//! `data/ptb/ptb.{train,valid,test}.txt` and `data/tinyshakespeare/input.txt`.

use std::path::{Path, PathBuf};

/// The address `fetch-data` downloads from by default: the reference's (MXNet's example data),
/// laid out as [`DataFile::path`] below it.
pub const DEFAULT_BASE_URL: &str = "https://raw.githubusercontent.com/dmlc/web-data/master/mxnet";

/// A dataset lstm-lm knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Penn Treebank (Mikolov's preprocessing): train, valid and test splits.
    Ptb,
    /// Tiny Shakespeare: one text; the trainer embeds a copy and splits it by lines.
    TinyShakespeare,
}

/// A split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training text.
    Train,
    /// Validation text.
    Valid,
    /// Test text.
    Test,
}

impl Split {
    /// `train`, `valid` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// The expected digest of a file, lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// MD5 (the reference's own checksums for PTB).
    Md5(&'static str),
    /// SHA-256.
    Sha256(&'static str),
}

/// One file of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFile {
    /// The dataset it belongs to.
    pub dataset: Dataset,
    /// The split it holds; `None` for a dataset that is one text.
    pub split: Option<Split>,
    /// Its path below the data folder, and below the download address.
    pub path: &'static str,
    /// Its expected digest.
    pub checksum: Checksum,
}

/// Every file of every dataset.
pub const FILES: [DataFile; 4] = [
    DataFile {
        dataset: Dataset::Ptb,
        split: Some(Split::Train),
        path: "ptb/ptb.train.txt",
        checksum: Checksum::Md5("f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    },
    DataFile {
        dataset: Dataset::Ptb,
        split: Some(Split::Valid),
        path: "ptb/ptb.valid.txt",
        checksum: Checksum::Md5("aa0affc06ff7c36e977d7cd49e3839bf"),
    },
    DataFile {
        dataset: Dataset::Ptb,
        split: Some(Split::Test),
        path: "ptb/ptb.test.txt",
        checksum: Checksum::Md5("8b80168b89c18661a38ef683c0dc3721"),
    },
    DataFile {
        dataset: Dataset::TinyShakespeare,
        split: None,
        path: "tinyshakespeare/input.txt",
        checksum: Checksum::Sha256(
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    },
];

impl Dataset {
    /// Every dataset.
    pub const ALL: [Dataset; 2] = [Dataset::TinyShakespeare, Dataset::Ptb];

    /// The name on the command line and of its folder: `ptb`, `tinyshakespeare`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Ptb => "ptb",
            Dataset::TinyShakespeare => "tinyshakespeare",
        }
    }

    /// The dataset called `name`, as [`Dataset::name`] spells it.
    pub fn from_name(name: &str) -> Option<Dataset> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Its files.
    pub fn files(self) -> impl Iterator<Item = &'static DataFile> {
        FILES.iter().filter(move |f| f.dataset == self)
    }

    /// Where `split` lies under `data_dir`, for a dataset that has splits.
    pub fn split_path(self, data_dir: &Path, split: Split) -> Option<PathBuf> {
        self.files()
            .find(|f| f.split == Some(split))
            .map(|f| data_dir.join(f.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptb_splits_lie_in_its_folder_and_names_round_trip() {
        let dir = Path::new("data");
        assert_eq!(
            Dataset::Ptb.split_path(dir, Split::Valid),
            Some(dir.join("ptb/ptb.valid.txt"))
        );
        assert_eq!(Dataset::TinyShakespeare.split_path(dir, Split::Train), None);
        for d in Dataset::ALL {
            assert_eq!(Dataset::from_name(d.name()), Some(d));
            assert!(d.files().all(|f| f.path.starts_with(d.name())));
        }
        assert_eq!(Dataset::from_name("wikitext"), None);
    }
}
