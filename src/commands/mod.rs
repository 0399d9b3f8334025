//! The commands on top of the layers: time the trainer (`bench`), score a saved run on any
//! text (`eval`), and sample from one (`generate`).

pub mod bench;
pub mod eval;
pub mod export;
pub mod generate;
