//! What every xdpkit XDP program shares: per-verdict counters, the dump
//! ring, the chain of stages and frame helpers. Each program is its own
//! binary (`src/<program>/main.rs`), so its ELF object carries only its own
//! maps and the shared ones it uses.
#![no_std]
// Single unaligned loads and stores (see `unaligned`).
#![feature(asm_experimental_arch)]

pub mod chain;
pub mod dump;
pub mod frame;
pub mod stats;
pub mod unaligned;
pub mod xsks;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: there is no
    // unwinding in BPF, so this only satisfies the compiler.
    loop {}
}

/// The license section every program object needs (GPL-compatible, for the
/// helpers the programs call). Expands to a static in the calling binary.
#[macro_export]
macro_rules! license {
    () => {
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
