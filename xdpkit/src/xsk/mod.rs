//! AF_XDP sockets: frames an interface's `xsk` stage (or a firewall
//! `to-userspace` rule) redirects reach a process without the network stack.
//!
//! ```no_run
//! use xdpkit::xsk::{Mode, Umem, UmemConfig, XskSocket};
//! # fn main() -> xdpkit::Result<()> {
//! let umem = Umem::new(UmemConfig::default())?;
//! // Needs `xdpkit attach xsk --dev eth0` (or a stage with a to-userspace rule).
//! let mut sock = XskSocket::bind("eth0", 0, umem, Mode::Auto)?;
//! println!("bound in {} mode", sock.mode());
//! loop {
//!     sock.wait(std::time::Duration::from_millis(100))?;
//!     sock.rx_batch(64, |frame| println!("{} bytes", frame.len()));
//! }
//! # }
//! ```
//!
//! A socket owns its [`Umem`] (frames of `frame_size` bytes). Frames move
//! between the kernel and the socket through four rings: the fill ring gives
//! the kernel empty frames to receive into, the RX ring hands them back full,
//! the TX ring sends frames out, the completion ring returns sent frames.
//! [`XskSocket`] keeps every frame on one of those rings or in its own free
//! list (a `Vec` sized once at bind), so receiving and sending allocate
//! nothing: [`XskStats::frames_free`] + `frames_in_fill` + `frames_in_tx`
//! always equals the UMEM's frame count.
//!
//! Registering a socket writes its fd into the interface's XSKMAP, pinned at
//! `<pin root>/<iface>/xsks` by every stage that redirects to sockets; the
//! entry is the socket's queue, so the stage redirects frames of that RX
//! queue to it. Dropping the socket removes the entry (closing the fd would
//! too; removing it first means no frame is redirected to a closing socket).
//!
//! # Why xdpilone
//!
//! The ring protocol (memory orders, cached producer/consumer indices,
//! need-wakeup flags, mmap offsets) comes from the `xdpilone` crate (1.3).
//! Compared in December 2026:
//! - **xdpilone 1.3**: pure Rust (no libbpf/libxdp C), a 1.x API stable
//!   since 2023, tiny (libc and spin), rust-version 1.65; exposes the four
//!   rings as they are, so frame ownership stays ours (no per-packet
//!   allocation, no hidden buffer pool). License EUPL-1.2 (weak copyleft:
//!   using it unmodified as a dependency is fine for an MIT/Apache crate).
//!   Passively maintained, which suits a finished kernel ABI.
//! - **xdp 0.8**: pure Rust, MIT/Apache, but 0.x with 7 breaking releases
//!   in 11, edition 2024, and by its own README "focused on the needs of
//!   Quilkin"; brings its own packet/NIC layers we do not need.
//! - **s2n-quic-xdp 0.91**: "internal crate used by s2n-quic", versioned
//!   with s2n-quic (breaking every release), needs rustc 1.95 (the
//!   workspace supports 1.87) and pulls s2n-quic-core and tokio.
//!
//! xdpkit adds what none of them has: the kernel side (which frames go to
//! which socket), the XSKMAP registration, zero-copy-or-copy fallback, and
//! accounting of every frame.

use std::{
    fmt,
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    ptr::NonNull,
    time::Duration,
};

use aya::maps::{MapData, XskMap};
use xdpilone::{xdp::XdpDesc, DeviceQueue, IfInfo, RingRx, RingTx, SocketConfig, User};
use xdpkit_common::xsk::MAX_QUEUES;

use crate::{
    iface,
    pins::{self, PinDir},
    Error, Result,
};

/// How frames are moved between the driver and the UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Zero-copy where the driver supports it, else copy.
    Auto,
    /// The kernel copies each frame into the UMEM (every driver; veth).
    Copy,
    /// The driver DMAs into the UMEM; an error if it cannot.
    ZeroCopy,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Copy => "copy",
            Mode::ZeroCopy => "zero-copy",
        })
    }
}

/// The shape of a UMEM and its rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemConfig {
    /// Bytes per frame: a power of two from 2048 to the page size (4096).
    /// The kernel keeps 256 bytes of each for XDP headroom, so 2048 holds
    /// frames up to 1792 bytes, 4096 up to 3840.
    pub frame_size: u32,
    /// Frames in the UMEM (its memory is `frame_size * frame_count`). Half
    /// are kept in the fill ring for receiving, the rest are free for
    /// sending.
    pub frame_count: u32,
    /// Extra bytes the kernel leaves before each received frame.
    pub headroom: u32,
    /// Entries of each of the four rings: a power of two.
    pub ring_size: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        UmemConfig {
            frame_size: 4096,
            frame_count: 4096,
            headroom: 0,
            ring_size: 2048,
        }
    }
}

/// Page-aligned memory shared with the kernel: the frames.
pub struct Umem {
    area: NonNull<u8>,
    len: usize,
    config: UmemConfig,
}

// SAFETY: the mapping is plain memory owned by this value; nothing else
// refers to it until a socket (which takes the Umem by value) registers it.
unsafe impl Send for Umem {}

impl Umem {
    /// Maps `frame_size * frame_count` bytes for frames.
    pub fn new(config: UmemConfig) -> Result<Umem> {
        let page = page_size();
        if !config.frame_size.is_power_of_two()
            || config.frame_size < 2048
            || config.frame_size as usize > page
        {
            return Err(Error::InvalidArgument(format!(
                "UMEM frame size {} is not a power of two from 2048 to {page}",
                config.frame_size
            )));
        }
        if config.frame_count < 2 {
            return Err(Error::InvalidArgument(format!(
                "UMEM frame count {} is too small: at least 2 (one to receive, one to send)",
                config.frame_count
            )));
        }
        if !config.ring_size.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "AF_XDP ring size {} is not a power of two",
                config.ring_size
            )));
        }
        // 256 bytes of XDP headroom and at least a minimal Ethernet frame must fit.
        if config.headroom + 256 + 64 > config.frame_size {
            return Err(Error::InvalidArgument(format!(
                "UMEM headroom {} leaves no room for a frame in {}-byte frames",
                config.headroom, config.frame_size
            )));
        }
        let len = (config.frame_size as usize)
            .checked_mul(config.frame_count as usize)
            .ok_or_else(|| Error::InvalidArgument("UMEM size overflows".into()))?;
        // SAFETY: an anonymous private mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Syscall {
                call: "mmap of the AF_XDP UMEM",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Umem {
            area: NonNull::new(ptr.cast()).expect("mmap succeeded"),
            len,
            config,
        })
    }

    /// Its shape.
    pub fn config(&self) -> UmemConfig {
        self.config
    }

    /// The frame at UMEM offset `addr`, `len` bytes, if in bounds.
    ///
    /// # Safety
    /// The caller owns that frame (the kernel does not, by the ring protocol)
    /// and holds no other slice of it.
    unsafe fn slice(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked); exclusivity by the caller.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.as_ptr().add(start), len) })
    }

    fn as_xdpilone(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.area, self.len)
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no socket uses it any more (a
        // socket drops its rings before its Umem).
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}

/// What a socket counted, and where its frames are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XskStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received (whole Ethernet frames).
    pub rx_bytes: u64,
    /// Frames queued for sending.
    pub tx_frames: u64,
    /// Bytes queued for sending.
    pub tx_bytes: u64,
    /// Frames the kernel reported sent (completion ring).
    pub tx_completed: u64,
    /// Frames not sent because the TX ring or the free frames ran out.
    pub tx_full: u64,
    /// Frames the kernel dropped: no fill frame or RX ring full (kernel count).
    pub kernel_rx_dropped: u64,
    /// Times the kernel found the RX ring full (kernel count).
    pub kernel_rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (kernel count).
    pub kernel_fill_ring_empty: u64,
    /// Invalid descriptors the kernel saw on RX and TX (kernel count).
    pub kernel_invalid_descs: u64,
    /// Frames the socket holds now (free, or queued to send).
    pub frames_free: u32,
    /// Frames given to the kernel to receive into now.
    pub frames_in_fill: u32,
    /// Frames given to the kernel to send, not yet completed, now.
    pub frames_in_tx: u32,
}

/// An AF_XDP socket bound to one queue of one interface, registered in the
/// interface's XSKMAP.
pub struct XskSocket {
    // Field order is drop order: the XSKMAP entry first, then the rings and
    // the socket, the memory last.
    registration: Option<XskMap<MapData>>,
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    _user: User,
    _xdpilone: xdpilone::Umem,
    umem: Umem,
    iface: String,
    queue: u32,
    mode: Mode,
    fd: RawFd,
    /// UMEM offsets of frames the socket owns and no ring holds.
    free: Vec<u64>,
    /// TX descriptors of one batch (capacity: the ring size, never grows).
    pending_tx: Vec<XdpDesc>,
    /// How many frames to keep in the fill ring.
    fill_target: u32,
    in_fill: u32,
    in_tx: u32,
    stats: XskStats,
}

// SAFETY: every part is owned by the socket (the rings' mmaps, the fd, the
// UMEM); xdpilone's rings are Send, the UMEM pointer is ours alone.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Opens a socket on `queue` of `iface` (in the calling thread's network
    /// namespace) with `umem`, and registers it in the interface's XSKMAP.
    ///
    /// Fails with a usage error if no stage on the interface redirects to
    /// sockets (no pinned XSKMAP: `xdpkit attach xsk --dev IFACE`), or if
    /// `Mode::ZeroCopy` is asked and the driver cannot do it.
    pub fn bind(iface: &str, queue: u32, umem: Umem, mode: Mode) -> Result<XskSocket> {
        Self::bind_in(&PinDir::new(iface)?, iface, queue, umem, mode)
    }

    /// [`Self::bind`], registering in the XSKMAP pinned in `pins` rather
    /// than the interface's own directory (a [`crate::Harness`]'s chain).
    pub fn bind_in(
        dir: &PinDir,
        iface: &str,
        queue: u32,
        umem: Umem,
        mode: Mode,
    ) -> Result<XskSocket> {
        let ifindex = iface::index(iface)?;
        if queue >= MAX_QUEUES {
            return Err(Error::InvalidArgument(format!(
                "queue {queue} is out of range: xdpkit's XSKMAP holds queues 0..{MAX_QUEUES}"
            )));
        }
        // Before anything is bound: a socket no stage feeds receives nothing.
        let pin = dir.file(pins::XSKS);
        if !pin.exists() {
            return Err(Error::NoSocketStage {
                iface: iface.to_string(),
            });
        }
        let map = MapData::from_pin(&pin).map_err(|e| Error::Map {
            what: format!("opening the XSKMAP {}", pin.display()),
            source: Box::new(e),
        })?;
        let map = XskMap::try_from(aya::maps::Map::XskMap(map)).map_err(|e| Error::Map {
            what: format!("{} is not an XSKMAP", pin.display()),
            source: Box::new(e),
        })?;

        // `open` takes the UMEM only when it binds: a failed zero-copy try
        // leaves it here for the copy-mode one.
        let mut umem = Some(umem);
        let mut socket = match mode {
            Mode::Copy | Mode::ZeroCopy => Self::open(iface, ifindex, queue, &mut umem, mode)?,
            Mode::Auto => match Self::open(iface, ifindex, queue, &mut umem, Mode::ZeroCopy) {
                Ok(socket) => socket,
                Err(Error::ZeroCopyUnsupported { .. }) => {
                    tracing::debug!("{iface}: no zero-copy AF_XDP, using copy mode");
                    Self::open(iface, ifindex, queue, &mut umem, Mode::Copy)?
                }
                Err(e) => return Err(e),
            },
        };
        socket.register(map)?;
        Ok(socket)
    }

    /// Binds in one mode, taking the UMEM out of `umem` on success only.
    fn open(
        iface: &str,
        ifindex: u32,
        queue: u32,
        umem: &mut Option<Umem>,
        mode: Mode,
    ) -> Result<XskSocket> {
        let area = umem.as_ref().expect("a UMEM to bind");
        let cfg = area.config;
        let sys = |call: &'static str| {
            move |e: xdpilone::Errno| Error::Syscall {
                call,
                source: std::io::Error::from_raw_os_error(e.get_raw().abs()),
            }
        };
        let xdpilone_cfg = xdpilone::UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: cfg.frame_size,
            headroom: cfg.headroom,
            flags: 0,
        };
        // SAFETY: the area is page aligned (mmap) and lives in the Umem,
        // which the socket keeps and drops after everything of xdpilone's.
        // On failure everything of xdpilone's for this try is dropped here,
        // and the memory can be registered again.
        let xdpilone_umem = unsafe { xdpilone::Umem::new(xdpilone_cfg, area.as_xdpilone()) }
            .map_err(sys("AF_XDP UMEM registration"))?;
        let mut info = IfInfo::invalid();
        info.from_ifindex(ifindex)
            .map_err(sys("AF_XDP interface lookup"))?;
        info.set_queue(queue);
        let sock =
            xdpilone::Socket::with_shared(&info, &xdpilone_umem).map_err(sys("AF_XDP socket"))?;
        let device = xdpilone_umem
            .fq_cq(&sock)
            .map_err(sys("AF_XDP fill/completion rings"))?;
        let ring = NonZeroU32::new(cfg.ring_size);
        let flags = SocketConfig::XDP_BIND_NEED_WAKEUP
            | match mode {
                Mode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                _ => SocketConfig::XDP_BIND_COPY,
            };
        let user = xdpilone_umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags: flags,
                },
            )
            .map_err(sys("AF_XDP RX/TX rings"))?;
        let rx = user.map_rx().map_err(sys("mapping the AF_XDP RX ring"))?;
        let tx = user.map_tx().map_err(sys("mapping the AF_XDP TX ring"))?;
        if let Err(e) = xdpilone_umem.bind(&user) {
            let errno = e.get_raw().abs();
            if mode == Mode::ZeroCopy
                && (errno == libc::EOPNOTSUPP || errno == libc::EPROTONOSUPPORT)
            {
                return Err(Error::ZeroCopyUnsupported {
                    iface: iface.to_string(),
                });
            }
            return Err(sys("AF_XDP bind")(e));
        }
        let umem = umem.take().expect("checked above");
        let fd = device.as_raw_fd();
        let frames = cfg.frame_count;
        let mut socket = XskSocket {
            registration: None,
            rx,
            tx,
            device,
            _user: user,
            _xdpilone: xdpilone_umem,
            umem,
            iface: iface.to_string(),
            queue,
            mode,
            fd,
            free: (0..frames)
                .rev()
                .map(|i| u64::from(i) * u64::from(cfg.frame_size))
                .collect(),
            pending_tx: Vec::with_capacity(cfg.ring_size as usize),
            fill_target: (frames / 2).clamp(1, cfg.ring_size),
            in_fill: 0,
            in_tx: 0,
            stats: XskStats::default(),
        };
        socket.refill();
        Ok(socket)
    }

    fn register(&mut self, mut map: XskMap<MapData>) -> Result<()> {
        map.set(self.queue, self.fd, 0).map_err(|e| Error::Map {
            what: format!(
                "registering the AF_XDP socket of {} queue {} in its XSKMAP",
                self.iface, self.queue
            ),
            source: Box::new(e),
        })?;
        self.registration = Some(map);
        Ok(())
    }

    /// The mode the socket is bound in (never `Auto`).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The RX queue.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The UMEM's shape.
    pub fn umem_config(&self) -> UmemConfig {
        self.umem.config
    }

    /// Waits up to `timeout` until frames are ready to receive (poll(2)).
    /// Returns whether they are.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        // Sent frames the kernel has not taken yet would wait forever in copy mode.
        self.kick();
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the call's duration.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Error::Syscall {
                call: "poll on the AF_XDP socket",
                source: e,
            });
        }
        Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// Receives up to `max` frames, calling `f` with each (the whole
    /// Ethernet frame, writable), then gives them back to the kernel.
    /// Returns how many were received; never blocks (see [`Self::wait`]).
    pub fn rx_batch(&mut self, max: u32, mut f: impl FnMut(&mut [u8])) -> usize {
        self.rx_tx_batch(max, |frame| {
            f(frame);
            None
        })
    }

    /// Receives up to `max` frames; `f` may change each in place and return
    /// `Some(len)` to send its first `len` bytes back out of this socket
    /// (no copy: the same UMEM frame goes on the TX ring), or `None` to
    /// give it back to the kernel for receiving. Returns how many frames
    /// were received. Frames the TX ring has no room for are dropped and
    /// counted in `tx_full`.
    pub fn rx_tx_batch(
        &mut self,
        max: u32,
        mut f: impl FnMut(&mut [u8]) -> Option<usize>,
    ) -> usize {
        self.reap();
        let frame_size = u64::from(self.umem.config.frame_size);
        let mut received = 0;
        {
            let mut rx = self.rx.receive(max);
            while let Some(desc) = rx.read() {
                received += 1;
                self.in_fill -= 1;
                let base = desc.addr - desc.addr % frame_size;
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += u64::from(desc.len);
                // SAFETY: the kernel handed this frame over on the RX ring;
                // it is ours until it goes on the fill or TX ring below.
                let verdict = match unsafe { self.umem.slice(desc.addr, desc.len as usize) } {
                    Some(frame) => f(frame).map(|len| len.min(frame.len())),
                    None => None,
                };
                match verdict {
                    Some(len) if self.pending_tx.len() < self.pending_tx.capacity() => {
                        self.pending_tx.push(XdpDesc {
                            addr: desc.addr,
                            len: len as u32,
                            options: 0,
                        })
                    }
                    Some(_) => {
                        self.stats.tx_full += 1;
                        self.free.push(base);
                    }
                    None => self.free.push(base),
                }
            }
            rx.release();
        }
        self.submit_tx();
        self.refill();
        received
    }

    /// Queues `frame` for sending, copied into a free UMEM frame. Returns
    /// false (and counts `tx_full`) when no frame or TX slot is free or the
    /// frame does not fit one. Sends on [`Self::flush`], [`Self::wait`] or
    /// the next receive.
    pub fn tx(&mut self, frame: &[u8]) -> bool {
        if self.free.is_empty() || self.pending_tx.len() == self.pending_tx.capacity() {
            self.reap();
            self.submit_tx();
        }
        let size = self.umem.config.frame_size as usize;
        let Some(addr) = self.free.pop() else {
            self.stats.tx_full += 1;
            return false;
        };
        if frame.len() > size || self.pending_tx.len() == self.pending_tx.capacity() {
            self.free.push(addr);
            self.stats.tx_full += 1;
            return false;
        }
        // SAFETY: a frame from the free list: no ring holds it.
        let dst = unsafe { self.umem.slice(addr, frame.len()) }.expect("free frames are in bounds");
        dst.copy_from_slice(frame);
        self.pending_tx.push(XdpDesc {
            addr,
            len: frame.len() as u32,
            options: 0,
        });
        true
    }

    /// Puts queued frames on the TX ring, wakes the kernel to send them, and
    /// takes back the frames it finished sending.
    pub fn flush(&mut self) {
        self.submit_tx();
        self.reap();
        self.refill();
    }

    /// Counters and where the frames are.
    pub fn stats(&self) -> XskStats {
        let mut stats = self.stats;
        if let Ok(k) = self._user.statistics_v2() {
            stats.kernel_rx_dropped = k.rx_dropped;
            stats.kernel_rx_ring_full = k.rx_ring_full;
            stats.kernel_fill_ring_empty = k.rx_fill_ring_empty_descs;
            stats.kernel_invalid_descs = k.rx_invalid_descs + k.tx_invalid_descs;
        }
        stats.frames_free = self.free.len() as u32 + self.pending_tx.len() as u32;
        stats.frames_in_fill = self.in_fill;
        stats.frames_in_tx = self.in_tx;
        stats
    }

    /// Moves queued TX descriptors onto the TX ring; what does not fit stays
    /// queued for the next call.
    fn submit_tx(&mut self) {
        if !self.pending_tx.is_empty() {
            let mut writer = self.tx.transmit(self.pending_tx.len() as u32);
            let sent = writer.insert(self.pending_tx.iter().copied()) as usize;
            writer.commit();
            drop(writer);
            for desc in &self.pending_tx[..sent] {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += u64::from(desc.len);
            }
            self.in_tx += sent as u32;
            // Shifts the rest to the front; no allocation (drain of a Vec).
            self.pending_tx.drain(..sent);
        }
        self.kick();
    }

    /// Copy mode sends only in sendto(2), and then a bounded batch: wake the
    /// kernel while frames wait on the TX ring (or when it asks, with
    /// need-wakeup, in zero-copy mode).
    fn kick(&mut self) {
        if self.tx.pending() > 0 && (self.mode == Mode::Copy || self.tx.needs_wakeup()) {
            self.tx.wake();
        }
    }

    /// Takes sent frames back from the completion ring.
    fn reap(&mut self) {
        if self.in_tx == 0 {
            return;
        }
        let frame_size = u64::from(self.umem.config.frame_size);
        let mut done = self.device.complete(self.in_tx);
        while let Some(addr) = done.read() {
            self.free.push(addr - addr % frame_size);
            self.in_tx -= 1;
            self.stats.tx_completed += 1;
        }
        done.release();
    }

    /// Tops the fill ring up to its target from the free frames.
    fn refill(&mut self) {
        let want = self.fill_target.saturating_sub(self.in_fill);
        let want = want.min(self.free.len() as u32);
        if want > 0 {
            let mut fill = self.device.fill(want);
            let start = self.free.len() - want as usize;
            let put = fill.insert(self.free[start..].iter().copied());
            fill.commit();
            drop(fill);
            self.free.truncate(self.free.len() - put as usize);
            self.in_fill += put;
        }
        if self.device.needs_wakeup() {
            self.device.wake();
        }
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        if let Some(mut map) = self.registration.take() {
            if let Err(e) = map.unset(self.queue) {
                tracing::warn!(
                    "{} queue {}: removing the AF_XDP socket from the XSKMAP: {e}",
                    self.iface,
                    self.queue
                );
            }
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umem_config_is_checked() {
        let bad = |c: UmemConfig| matches!(Umem::new(c), Err(Error::InvalidArgument(_)));
        let ok = UmemConfig::default();
        assert!(bad(UmemConfig {
            frame_size: 3000,
            ..ok
        }));
        assert!(bad(UmemConfig {
            frame_size: 1024,
            ..ok
        }));
        assert!(bad(UmemConfig {
            frame_count: 1,
            ..ok
        }));
        assert!(bad(UmemConfig {
            ring_size: 1000,
            ..ok
        }));
        assert!(bad(UmemConfig {
            headroom: 4000,
            ..ok
        }));
        let umem = Umem::new(UmemConfig {
            frame_count: 8,
            ..ok
        })
        .expect("8 frames map");
        assert_eq!(umem.len, 8 * 4096);
    }

    #[test]
    fn binding_without_a_socket_stage_says_what_to_attach() {
        // `lo` exists everywhere and never has xdpkit's XSKMAP pinned.
        let umem = Umem::new(UmemConfig {
            frame_count: 4,
            ..UmemConfig::default()
        })
        .expect("map");
        match XskSocket::bind("lo", 0, umem, Mode::Copy) {
            Err(e @ Error::NoSocketStage { .. }) => {
                assert!(e.is_usage());
                assert!(e.to_string().contains("xdpkit attach xsk --dev lo"), "{e}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("bound without an XSKMAP"),
        }
    }
}
