//! The binary's parts: its flags ([`args`]) and how it shows training ([`display`]).

pub mod args;
pub mod display;
