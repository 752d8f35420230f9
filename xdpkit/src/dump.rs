//! `xdpkit dump`: the program attached to an interface copies the frames it
//! gave the selected verdicts (one in `sample`) into a pinned ring buffer;
//! this reads them and writes pcapng with the verdict and rule of each frame
//! in a packet comment. No fentry or tracing needed, and redirected frames
//! are included: the copy is made where the verdict is counted.

use std::{
    borrow::Cow,
    io::Write,
    os::fd::AsRawFd as _,
    time::{Duration, SystemTime},
};

use aya::maps::{Array, Map, MapData, RingBuf};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
    DataLink,
};
use xdpkit_common::{
    dump::{DumpConfig, DumpHeader, DUMP_MAX_SNAP},
    firewall::NO_RULE,
    XdpAction,
};

use crate::maps::map_err;
use crate::{iface, pins, pins::PinDir, privilege, Error, Result};

/// What to capture.
#[derive(Clone, Debug)]
pub struct DumpRequest {
    /// Interface whose xdpkit program copies the frames.
    pub iface: String,
    /// Verdicts to capture.
    pub actions: Vec<XdpAction>,
    /// One frame in this many, per CPU (1: all).
    pub sample: u32,
    /// Bytes kept of each frame.
    pub snaplen: u32,
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// When the verdict was given.
    pub time: SystemTime,
    /// The frame's length.
    pub len: u32,
    /// Its first bytes (up to the snap length).
    pub data: Vec<u8>,
    /// The verdict.
    pub action: XdpAction,
    /// The firewall rule that decided, if one did.
    pub rule: Option<u32>,
}

impl Captured {
    /// The pcapng packet comment: `verdict=drop rule=3` (`rule=-` without one).
    pub fn comment(&self) -> String {
        format!(
            "verdict={} rule={}",
            self.action.name(),
            self.rule.map_or("-".to_string(), |r| r.to_string())
        )
    }
}

/// A running capture: the program copies frames until this is dropped.
pub struct Dump {
    config: Map,
    ring: RingBuf<MapData>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to date the kernel's stamps.
    wall_offset: Duration,
}

impl Dump {
    /// Starts copying on `req.iface`.
    ///
    /// # Errors
    ///
    /// No xdpkit program on the interface, one attached by an xdpkit without
    /// dumps, another dump already running there, or bad sizes.
    pub fn start(req: &DumpRequest) -> Result<Dump> {
        iface::validate_name(&req.iface)?;
        if req.sample == 0 {
            return Err(Error::InvalidArgument(
                "--sample must be at least 1".to_string(),
            ));
        }
        if req.snaplen == 0 || req.snaplen > DUMP_MAX_SNAP {
            return Err(Error::InvalidArgument(format!(
                "--snaplen {} is out of range: 1 to {DUMP_MAX_SNAP} bytes",
                req.snaplen
            )));
        }
        if req.actions.is_empty() {
            return Err(Error::InvalidArgument("no verdict to capture".to_string()));
        }
        privilege::require("dump")?;
        let dir = PinDir::new(&req.iface)?;
        if !dir.has_link() {
            iface::index(&req.iface)?;
            return Err(Error::NotAttached {
                iface: req.iface.clone(),
                action: "dump",
            });
        }
        let open = |file: &str| {
            MapData::from_pin(dir.file(file)).map_err(|_| {
                Error::InvalidArgument(format!(
                    "the program on {} was attached by an xdpkit without dumps: attach it again",
                    req.iface
                ))
            })
        };
        let mut config = Map::Array(open(pins::DUMP_CONFIG)?);
        let ring = RingBuf::try_from(Map::RingBuf(open(pins::DUMP_RING)?))
            .map_err(map_err("open the dump ring"))?;
        let current = read_config(&config)?;
        if current.actions != 0 {
            return Err(Error::InvalidArgument(format!(
                "another dump is running on {}: stop it first",
                req.iface
            )));
        }
        let cfg = DumpConfig {
            actions: req.actions.iter().fold(0, |m, a| m | 1 << (*a as u32)),
            sample: req.sample,
            snaplen: req.snaplen,
            _pad: 0,
        };
        write_config(&mut config, cfg)?;
        let mut dump = Dump {
            config,
            ring,
            wall_offset: wall_offset(),
        };
        // Copies left over from a dump that was killed belong to nobody.
        while dump.ring.next().is_some() {}
        dump.wall_offset = wall_offset();
        Ok(dump)
    }

    /// The next copied frame, waiting up to `timeout` for one.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Captured>> {
        if let Some(c) = self.take() {
            return Ok(Some(c));
        }
        let mut fds = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fds, 1, timeout.as_millis().min(60_000) as i32) };
        Ok(self.take())
    }

    fn take(&mut self) -> Option<Captured> {
        let offset = self.wall_offset;
        let item = self.ring.next()?;
        let head_len = std::mem::size_of::<DumpHeader>();
        if item.len() < head_len {
            return None;
        }
        // SAFETY: the record starts with a DumpHeader the program wrote.
        let head: DumpHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let cap = (head.cap as usize).min(item.len() - head_len);
        Some(Captured {
            time: SystemTime::UNIX_EPOCH + offset + Duration::from_nanos(head.ts_ns),
            len: head.len,
            data: item[head_len..head_len + cap].to_vec(),
            action: XdpAction::from_u32(head.action).unwrap_or(XdpAction::Aborted),
            rule: (head.rule != NO_RULE).then_some(head.rule),
        })
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        if let Err(e) = write_config(&mut self.config, DumpConfig::default()) {
            tracing::warn!("cannot stop the dump: {e}");
        }
    }
}

fn read_config(map: &Map) -> Result<DumpConfig> {
    let array: Array<&MapData, DumpConfig> =
        Array::try_from(map).map_err(map_err("open the dump settings"))?;
    array.get(&0, 0).map_err(map_err("read the dump settings"))
}

fn write_config(map: &mut Map, cfg: DumpConfig) -> Result<()> {
    let mut array: Array<&mut MapData, DumpConfig> =
        Array::try_from(map).map_err(map_err("open the dump settings"))?;
    array
        .set(0, cfg, 0)
        .map_err(map_err("write the dump settings"))
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now.
fn wall_offset() -> Duration {
    let mono = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    wall.saturating_sub(mono)
}

/// Writes captured frames as pcapng: one Ethernet interface named after the
/// dumped one, nanosecond timestamps, the verdict and rule as a comment.
pub struct PcapngSink<W: Write> {
    writer: PcapNgWriter<W>,
}

impl<W: Write> PcapngSink<W> {
    /// Writes the section and interface headers.
    pub fn new(out: W, ifname: &str, snaplen: u32) -> Result<PcapngSink<W>> {
        let mut writer = PcapNgWriter::new(out).map_err(pcap_err)?;
        writer
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(ifname.to_string())),
                    InterfaceDescriptionOption::IfDescription(Cow::Borrowed(
                        "frames copied by xdpkit's XDP program after its verdict",
                    )),
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })
            .map_err(pcap_err)?;
        Ok(PcapngSink { writer })
    }

    /// Writes one frame.
    pub fn write(&mut self, c: &Captured) -> Result<()> {
        let timestamp = c
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp,
                original_len: c.len,
                data: Cow::Borrowed(&c.data),
                options: vec![EnhancedPacketOption::Comment(Cow::Owned(c.comment()))],
            })
            .map_err(pcap_err)?;
        Ok(())
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> Result<()> {
        self.writer
            .get_mut()
            .flush()
            .map_err(|source| Error::Syscall {
                call: "write the capture",
                source,
            })
    }
}

fn pcap_err(e: pcap_file::PcapError) -> Error {
    Error::Syscall {
        call: "write the capture",
        source: std::io::Error::other(e),
    }
}
