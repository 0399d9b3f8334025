//! The binary's parts: its flags ([`args`]), how it shows training ([`display`]) and its
//! allocator's settings ([`memory`]).

pub mod args;
pub mod display;
pub mod memory;
