//! The library's AF_XDP sockets on a veth lab, with the `xsk` stage attached
//! on the receiving side: frames recycle through a tiny UMEM without
//! stalling or losing any (every frame the stage redirected is received or
//! counted as dropped by the kernel, every frame is back in the socket's
//! hands at the end), and receiving in steady state allocates nothing
//! (a counting global allocator, switched on for the receiving thread only).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use xdpkit::{
    attach::AttachRequest,
    stats,
    xsk::{Mode, Umem, UmemConfig, XskSocket, XskStats},
    XdpAction,
};
use xdpkit_lab::lab::{require_root, Lab};

/// Counts allocations made by threads that switched counting on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // try_with: no panic while the thread's locals are being torn down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; counting has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Namespaces `gen` and `dut`, a veth pair, the xsk stage on dut's end.
fn lab(prefix: &str, third_octet: u8) -> Lab {
    let lab = Lab::builder(prefix)
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            &format!("{prefix}-g"),
            Some(&format!("198.18.{third_octet}.1/24")),
            "dut",
            &format!("{prefix}-d"),
            Some(&format!("198.18.{third_octet}.2/24")),
        )
        .build()
        .expect("lab");
    let dut_if = format!("{prefix}-d");
    lab.run_in("dut", move || {
        xdpkit::attach(&AttachRequest::from_list(
            &dut_if,
            "xsk",
            xdpkit::Mode::Native,
            None,
            None,
            false,
        )?)
    })
    .unwrap()
    .expect("attach xsk");
    lab
}

/// `count` UDP frames from gen to dut of 60 to 315 bytes.
fn frames(lab: &Lab, prefix: &str, third_octet: u8, count: usize) -> Vec<Vec<u8>> {
    let src = lab.mac("gen", &format!("{prefix}-g")).unwrap();
    let dst = lab.mac("dut", &format!("{prefix}-d")).unwrap();
    (0..count)
        .map(|i| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(src, dst)
                .ipv4([198, 18, third_octet, 1], [198, 18, third_octet, 2], 64)
                .udp(40000, 9)
                .write(&mut frame, &vec![i as u8; 18 + i % 256])
                .unwrap();
            frame
        })
        .collect()
}

/// What the receiving side saw.
struct Received {
    stats: XskStats,
    /// Frames the xsk stage redirected (its counters).
    redirected: u64,
    /// Allocations the receiving thread made in the counted phase.
    allocations: u64,
    /// Frames received in the counted phase.
    counted_frames: u64,
}

/// Binds a socket on dut with `config`, then sends `frames` from gen while
/// it receives (echoing each frame back when `echo`). Counting of
/// allocations starts once `warm_up` frames were received. Stops when every
/// frame the stage redirected is accounted for after the sending ended, or
/// after 2 s without progress (a stall: the assertions then fail).
fn run(
    lab: &Lab,
    prefix: &str,
    frames: &[Vec<u8>],
    config: UmemConfig,
    echo: bool,
    warm_up: u64,
) -> Received {
    let dut_if = format!("{prefix}-d");
    let gen_if = format!("{prefix}-g");
    let sent_all = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            let dut_if = dut_if.clone();
            let sent_all = &sent_all;
            lab.run_in("dut", move || {
                let umem = Umem::new(config).expect("umem");
                let mut socket = XskSocket::bind(&dut_if, 0, umem, Mode::Auto).expect("bind");
                assert_eq!(socket.mode(), Mode::Copy, "veth has no zero-copy");
                ready_tx.send(()).unwrap();
                let stage = xdpkit::pins::PinDir::new(&dut_if).unwrap().stage("xsk");
                let redirected = || {
                    stats::read_pinned(&stage.file(xdpkit::pins::STATS))
                        .unwrap()
                        .get(XdpAction::Redirect)
                        .packets
                };
                let mut last_progress = Instant::now();
                let mut last_seen = 0;
                let mut counted_from = None;
                loop {
                    socket.wait(Duration::from_millis(20)).expect("poll");
                    let got = if echo {
                        socket.rx_tx_batch(64, |frame| {
                            // Back to where it came from.
                            let (dst, src) = frame.split_at_mut(6);
                            dst.swap_with_slice(&mut src[..6]);
                            Some(frame.len())
                        })
                    } else {
                        socket.rx_batch(64, |frame| assert!(frame.len() >= 60))
                    };
                    let s = socket.stats();
                    if counted_from.is_none() && s.rx_frames >= warm_up {
                        counted_from = Some(s.rx_frames);
                        COUNTING.with(|c| c.set(true));
                    }
                    if got > 0 {
                        last_progress = Instant::now();
                    }
                    let seen = s.rx_frames + s.kernel_rx_dropped + s.kernel_rx_ring_full;
                    if seen != last_seen {
                        last_seen = seen;
                        last_progress = Instant::now();
                    }
                    if sent_all.load(Ordering::Acquire) {
                        COUNTING.with(|c| c.set(false));
                        if seen >= redirected() || last_progress.elapsed() > Duration::from_secs(2)
                        {
                            break;
                        }
                    }
                }
                COUNTING.with(|c| c.set(false));
                let allocations = ALLOCATIONS.load(Ordering::Relaxed);
                // Frames still on the TX ring come back through completions.
                let deadline = Instant::now() + Duration::from_secs(5);
                while socket.stats().frames_in_tx > 0 && Instant::now() < deadline {
                    socket.flush();
                    std::thread::sleep(Duration::from_millis(1));
                }
                let stats = socket.stats();
                Received {
                    counted_frames: stats.rx_frames - counted_from.unwrap_or(stats.rx_frames),
                    stats,
                    redirected: redirected(),
                    allocations,
                }
            })
            .unwrap()
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("socket bound");
        let sent = lab.send_frames("gen", &gen_if, frames).expect("send");
        assert_eq!(sent as usize, frames.len(), "frames sent");
        sent_all.store(true, Ordering::Release);
        receiver.join().unwrap()
    })
}

#[test]
fn a_small_umem_recycles_200000_frames_without_stalling_or_leaking() {
    if !require_root("a_small_umem_recycles_200000_frames_without_stalling_or_leaking") {
        return;
    }
    const FRAMES: usize = 200_000;
    let lab = lab("xkxr", 76);
    let frames = frames(&lab, "xkxr", 76, FRAMES);
    let config = UmemConfig {
        frame_size: 2048,
        frame_count: 64,
        headroom: 0,
        ring_size: 64,
    };
    // Echo, so frames also go round the TX and completion rings.
    let got = run(&lab, "xkxr", &frames, config, true, 0);
    let s = got.stats;
    eprintln!(
        "redirected {} received {} dropped {} ring-full {} sent back {} not sent {}",
        got.redirected,
        s.rx_frames,
        s.kernel_rx_dropped,
        s.kernel_rx_ring_full,
        s.tx_completed,
        s.tx_full
    );
    assert!(got.redirected > 0);
    assert_eq!(
        s.rx_frames + s.kernel_rx_dropped + s.kernel_rx_ring_full,
        got.redirected,
        "every redirected frame was received or counted as dropped"
    );
    // Each of the 64 frames went round at least 100 times (a leak of one
    // frame per round would have emptied the UMEM long before); the kernel
    // drops what arrives while the fill ring is empty, counted above.
    assert!(
        s.rx_frames > 64 * 100,
        "only {} of {FRAMES} frames received: stalled?",
        s.rx_frames
    );
    assert_eq!(
        s.tx_frames + s.tx_full,
        s.rx_frames,
        "each frame sent back or counted"
    );
    assert_eq!(s.tx_completed, s.tx_frames, "every frame sent came back");
    assert_eq!(
        s.frames_free + s.frames_in_fill + s.frames_in_tx,
        64,
        "every frame accounted for: {s:?}"
    );
    assert_eq!(s.frames_in_tx, 0);
}

#[test]
fn receiving_allocates_nothing_in_steady_state() {
    if !require_root("receiving_allocates_nothing_in_steady_state") {
        return;
    }
    const FRAMES: usize = 20_000;
    const WARM_UP: u64 = 1000;
    let lab = lab("xkxa", 79);
    let frames = frames(&lab, "xkxa", 79, FRAMES);
    let got = run(&lab, "xkxa", &frames, UmemConfig::default(), false, WARM_UP);
    assert!(
        got.counted_frames >= (FRAMES as u64) / 2,
        "only {} frames received after the warm-up",
        got.counted_frames
    );
    assert_eq!(
        got.allocations, 0,
        "allocations while receiving {} frames",
        got.counted_frames
    );
    let s = got.stats;
    assert_eq!(
        s.rx_frames + s.kernel_rx_dropped + s.kernel_rx_ring_full,
        got.redirected
    );
}
