//! Corpora, vocabulary and batching.

pub mod batcher;
pub mod corpus;
pub mod stream;
pub mod vocab;
