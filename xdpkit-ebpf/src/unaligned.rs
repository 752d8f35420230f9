//! Single loads and stores of 2, 4 or 8 bytes at any alignment. Frame
//! headers sit at any offset (IPv4 addresses at 26 and 30 after Ethernet,
//! IPv6 ones at 22 and 38), and LLVM's BPF target splits an access it
//! cannot prove aligned into single bytes (a load and a shift per byte),
//! while the kernel allows unaligned frame accesses where the CPU does them
//! (x86-64, arm64: `HAVE_EFFICIENT_UNALIGNED_ACCESS`). Values are in native
//! order both ways: a loaded word stored back keeps its bytes' order.

/// One `W`-byte load from `p`, whatever its alignment.
///
/// # Safety
/// `p` must point to `W` readable bytes (of the frame, checked against its
/// end, or of a map value).
#[inline(always)]
pub unsafe fn load<const W: usize>(p: *const u8) -> u64 {
    const { assert!(W == 2 || W == 4 || W == 8) };
    let out: u64;
    // SAFETY: the caller's promise; the instruction only reads `W` bytes at `p`.
    unsafe {
        match W {
            8 => core::arch::asm!("{o} = *(u64 *)({p} + 0)", o = lateout(reg) out, p = in(reg) p,
                options(pure, readonly, nostack)),
            4 => core::arch::asm!("{o} = *(u32 *)({p} + 0)", o = lateout(reg) out, p = in(reg) p,
                options(pure, readonly, nostack)),
            _ => core::arch::asm!("{o} = *(u16 *)({p} + 0)", o = lateout(reg) out, p = in(reg) p,
                options(pure, readonly, nostack)),
        }
    }
    out
}

/// One `W`-byte store of `v`'s low bytes at `p`, whatever its alignment.
///
/// # Safety
/// `p` must point to `W` writable bytes of the frame (checked against its
/// end) that nothing else refers to.
#[inline(always)]
pub unsafe fn store<const W: usize>(p: *mut u8, v: u64) {
    const { assert!(W == 2 || W == 4 || W == 8) };
    // SAFETY: the caller's promise; the instruction only writes `W` bytes at `p`.
    unsafe {
        match W {
            8 => core::arch::asm!("*(u64 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v,
                options(nostack)),
            4 => core::arch::asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v,
                options(nostack)),
            _ => core::arch::asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v,
                options(nostack)),
        }
    }
}

/// `x`, through a register move LLVM cannot see through: a length it
/// would otherwise know equals `data_end - data` makes it fold the pointer
/// checks the verifier needs (`p + N > data_end`) into length checks,
/// which prove nothing about the packet.
#[inline(always)]
pub fn opaque(x: usize) -> usize {
    let out: usize;
    // SAFETY: a register copy.
    unsafe {
        core::arch::asm!("{o} = {i}", o = lateout(reg) out, i = in(reg) x,
            options(pure, nomem, nostack));
    }
    out
}
