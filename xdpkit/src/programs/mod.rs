//! The data-plane programs, one folder each (config, compile, live handle,
//! model, error), registered in [`registry`](crate::programs).

pub mod firewall;
pub mod redirect;
