//! The redirect program: sends every frame out of another interface.

pub mod config;
