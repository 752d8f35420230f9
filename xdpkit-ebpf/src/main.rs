//! xdpkit's XDP programs. One module per program; `stats` and `frame` are
//! shared helpers. Every entry point counts its verdict before returning it.
#![no_std]
#![no_main]

mod frame;
mod stats;

mod bench;
mod drop;
mod dump;
mod exceptions;
mod firewall;
mod pass;
mod redirect;
mod trafficgen;
mod tx;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: there is no
    // unwinding in BPF, so this only satisfies the compiler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
