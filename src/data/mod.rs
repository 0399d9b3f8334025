//! Corpora, vocabulary and batching.

pub mod batcher;
pub mod corpus;
pub mod epochs;
pub mod prepare;
pub mod store;
pub mod stream;
pub mod tokenizer;
pub mod vocab;
