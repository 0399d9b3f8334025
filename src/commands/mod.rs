//! The commands on top of the layers: time the trainer (`bench`), score a saved run on any
//! text (`eval`) or line by line (`score`), sample from one (`generate`), write it in
//! PyTorch's layout (`export`) and read one back (`import`).

pub mod bench;
pub mod eval;
pub mod export;
pub mod generate;
pub mod import;
pub mod score;
