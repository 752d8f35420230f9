//! Ctrl-C and SIGTERM as a flag that long-running commands poll, so they
//! end the normal way: detach, stop the dump, flush, print a summary.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// From now on SIGINT and SIGTERM set the flag instead of killing.
pub fn stop_on_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        let handler = on_signal as *const () as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether a stop was asked for.
pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}
