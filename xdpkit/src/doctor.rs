//! `xdpkit doctor`: checks of the host and of one interface, each with what
//! it found, why it matters and how to fix it. It only reads: the one thing
//! it loads is a raw-tracepoint program that counts XDP exceptions for the
//! watch window, gone when it returns.

use std::{os::fd::AsRawFd as _, time::Duration};

use aya::{maps::PerCpuArray, programs::RawTracePoint};
use serde::Serialize;
use xdpkit_common::doctor::{EXCEPTIONS_MAP, EXCEPTION_SLOTS};

use crate::{
    attach::program_name, features, iface, netlink, netlink::AttachMode, object, privilege, Error,
    Result,
};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but something is likely to surprise.
    Warn,
    /// Something xdpkit needs is missing or broken.
    Fail,
    /// Could not be checked here.
    Skip,
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Short name (`jit`, `bpffs`, ...).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found, and why it matters.
    pub detail: String,
    /// What to do about it, when something should be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, status: Status, detail: String, fix: Option<String>) -> Check {
    Check {
        name,
        status,
        detail,
        fix,
    }
}

/// Which flow hash the balancer on `dev` uses: the driver's RX hash when
/// the RX-hash root runs there, with the balancer's count of new flows
/// hashed each way.
fn flow_hash_check(dev: &str, offers: bool, attached: Option<&netlink::XdpAttachment>) -> Check {
    let bound = attached.is_some_and(|a| program_name(a.prog_id) == crate::rx_hash::KERNEL_NAME);
    let status = crate::programs::balancer::live::status(dev).ok();
    let counts = status
        .as_ref()
        .map(|s| {
            format!(
                " (new flows so far: {} by RX hash, {} by 5-tuple)",
                s.hashed_rx, s.hashed_tuple
            )
        })
        .unwrap_or_default();
    let tuple_only = status.is_some_and(|s| s.settings.flow_hash == "tuple");
    let text = match (bound, offers) {
        (true, _) if tuple_only => format!(
            "the RX-hash root runs on {dev}, but the balancer's flow hash is set to tuple: it hashes new flows by their 5-tuple{counts}"
        ),
        (true, _) => format!(
            "the RX-hash root runs on {dev}: the balancer hashes new flows with the driver's RX hash where the frame has one{counts}"
        ),
        (false, true) => format!(
            "{dev} offers an RX hash; the balancer hashes new flows by their 5-tuple here (the RX-hash root runs only when a chain with the balancer is attached in native mode){counts}"
        ),
        (false, false) => format!(
            "{dev} offers no RX hash: the balancer hashes new flows by their 5-tuple{counts}"
        ),
    };
    check("flow-hash", Status::Ok, text, None)
}

use crate::mode::SINGLE_PAGE_MTU;
const VERDICTS: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Runs every check: the host's, then `dev`'s if given, then XDP exceptions
/// over `watch` (zero: not watched).
pub fn run(dev: Option<&str>, watch: Duration) -> Result<Vec<Check>> {
    if let Some(dev) = dev {
        iface::validate_name(dev)?;
        iface::index(dev)?;
    }
    let mut checks = host_checks();
    let root = privilege::can_attach();
    if let Some(dev) = dev {
        checks.extend(device_checks(dev)?);
    }
    if watch.is_zero() {
        checks.push(check(
            "exceptions",
            Status::Skip,
            "not watched (--watch 0)".into(),
            None,
        ));
    } else if !root {
        checks.push(check(
            "exceptions",
            Status::Skip,
            "watching the xdp:xdp_exception tracepoint needs root".into(),
            Some("run `sudo xdpkit doctor`".into()),
        ));
    } else {
        checks.push(exceptions(watch)?);
    }
    Ok(checks)
}

fn host_checks() -> Vec<Check> {
    let k = features::kernel();
    let mut checks = Vec::new();
    checks.push(match k.jit.as_str() {
        j if j.starts_with("on") => check("jit", Status::Ok, format!("BPF JIT is {j}"), None),
        j => check(
            "jit",
            Status::Fail,
            format!("BPF JIT is {j}: programs run in the interpreter, several times slower"),
            Some("sysctl -w net.core.bpf_jit_enable=1".into()),
        ),
    });
    checks.push(if k.bpffs {
        check(
            "bpffs",
            Status::Ok,
            "bpffs is mounted at /sys/fs/bpf".into(),
            None,
        )
    } else {
        check(
            "bpffs",
            Status::Fail,
            "bpffs is not mounted at /sys/fs/bpf: attached programs cannot be pinned".into(),
            Some("mount -t bpf bpf /sys/fs/bpf (xdpkit attach also tries this)".into()),
        )
    });
    checks.push(if k.btf {
        check(
            "btf",
            Status::Ok,
            "kernel BTF at /sys/kernel/btf/vmlinux".into(),
            None,
        )
    } else {
        check(
            "btf",
            Status::Warn,
            "no kernel BTF: xdpkit works without it, but bpftool and CO-RE tools need it".into(),
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
        )
    });
    let version = kernel_version(&k.release);
    checks.push(match version {
        Some(v) if v >= (6, 3) => check("kernel", Status::Ok, format!("Linux {}", k.release), None),
        Some(v) if v >= (5, 18) => check(
            "kernel",
            Status::Warn,
            format!(
                "Linux {}: device XDP features (netlink) need 6.3",
                k.release
            ),
            None,
        ),
        Some(v) if v >= (5, 9) => check(
            "kernel",
            Status::Warn,
            format!(
                "Linux {}: xdpkit trafficgen needs 5.18 (live frames); the rest works",
                k.release
            ),
            Some("upgrade the kernel to 5.18 or later".into()),
        ),
        _ => check(
            "kernel",
            Status::Fail,
            format!(
                "Linux {}: xdpkit attaches with bpf_link, which XDP has since 5.9",
                k.release
            ),
            Some("upgrade the kernel to 5.9 or later".into()),
        ),
    });
    checks.push(if privilege::can_attach() {
        check(
            "privileges",
            Status::Ok,
            "CAP_BPF and CAP_NET_ADMIN (or root)".into(),
            None,
        )
    } else {
        check(
            "privileges",
            Status::Warn,
            "no CAP_BPF/CAP_NET_ADMIN: attach, rule, bench and trafficgen will refuse".into(),
            Some("run xdpkit with sudo".into()),
        )
    });
    checks
}

fn device_checks(dev: &str) -> Result<Vec<Check>> {
    let ifindex = iface::index(dev)?;
    let facts = netlink::link_facts(ifindex)?;
    let dev_features = features::device(dev).ok();
    let multi_buffer = dev_features.as_ref().is_some_and(|f| f.multi_buffer);
    let mut checks = Vec::new();
    checks.push(match facts.mtu {
        Some(mtu) if mtu > SINGLE_PAGE_MTU && !multi_buffer => check(
            "mtu",
            Status::Fail,
            format!(
                "{dev} has MTU {mtu}: native XDP takes frames up to one page (MTU {SINGLE_PAGE_MTU}) on a device without multi-buffer support, so attaching in native mode fails"
            ),
            Some(format!("ip link set dev {dev} mtu 1500, or attach with --mode skb")),
        ),
        Some(mtu) => check("mtu", Status::Ok, format!("{dev} has MTU {mtu}"), None),
        None => check("mtu", Status::Skip, format!("{dev} reports no MTU"), None),
    });
    // Multi-buffer: whether frames larger than a page reach XDP at all.
    checks.push(match &dev_features {
        Some(f) => check(
            "multi-buffer",
            if f.multi_buffer {
                Status::Ok
            } else {
                Status::Warn
            },
            format!(
                "{dev}: multi-buffer {}",
                features::multi_buffer_text(f.multi_buffer)
            ),
            (!f.multi_buffer).then(|| {
                format!(
                    "keep the MTU of {dev} at most {SINGLE_PAGE_MTU} for native XDP, or attach with --mode skb for jumbo frames"
                )
            }),
        ),
        None => check(
            "multi-buffer",
            Status::Skip,
            format!("{dev}: the kernel reports no XDP features (netdev netlink family)"),
            None,
        ),
    });
    let attached = netlink::xdp_attachment(ifindex)?;
    let rx_hash = dev_features
        .as_ref()
        .is_some_and(|f| f.rx_metadata.contains(&"hash"));
    checks.push(flow_hash_check(dev, rx_hash, attached.as_ref()));
    let ours = crate::status::status(Some(dev), Duration::ZERO)
        .ok()
        .and_then(|s| s.into_iter().next())
        .filter(|s| s.state == "attached");
    checks.push(match (&attached, &ours) {
        (None, _) => check("program", Status::Ok, format!("no XDP program on {dev}"), None),
        (Some(att), Some(st)) if st.prog_id == att.prog_id => check(
            "program",
            Status::Ok,
            format!("xdpkit's {} (program {}) in {} mode", st.program, att.prog_id, att.mode.name()),
            None,
        ),
        (Some(att), _) => check(
            "program",
            Status::Warn,
            format!(
                "program {} ({}) attached by another tool; xdpkit attach refuses to replace it",
                att.prog_id,
                program_name(att.prog_id)
            ),
            Some(format!(
                "detach it with the tool that attached it, or `xdpkit attach ... --dev {dev} --force`"
            )),
        ),
    });
    let native = dev_features.as_ref().is_some_and(|f| f.basic);
    checks.push(match &attached {
        Some(att) if att.mode == AttachMode::Skb && native => check(
            "mode",
            Status::Warn,
            format!("{dev} runs XDP in generic (skb) mode although its driver supports native XDP: every frame gets an skb first, much slower"),
            Some(format!("reattach with --mode native (xdpkit attach <program> --dev {dev} --mode native)")),
        ),
        Some(att) => check("mode", Status::Ok, format!("{} mode", att.mode.name()), None),
        None => check("mode", Status::Skip, "no program attached".into(), None),
    });
    if facts.veth {
        checks.push(veth_peer(dev, &facts));
    }
    Ok(checks)
}

/// A veth delivers frames that XDP sends into it (XDP_TX on this end, a
/// redirect to this end) only if the peer runs XDP or has GRO on.
fn veth_peer(dev: &str, facts: &netlink::LinkFacts) -> Check {
    let Some(peer) = facts.peer.filter(|_| !facts.peer_elsewhere) else {
        return check(
            "veth-peer",
            Status::Skip,
            format!("{dev}'s veth peer is in another network namespace: cannot look at it from here"),
            Some("in the peer's namespace, run `xdpkit doctor --dev <peer>` or check that it has an XDP program or GRO on".into()),
        );
    };
    let Some(name) = iface::name(peer) else {
        return check(
            "veth-peer",
            Status::Skip,
            format!("{dev}'s veth peer (ifindex {peer}) has no name here"),
            None,
        );
    };
    let xdp = netlink::xdp_attachment(peer).ok().flatten().is_some();
    let gro = gro_enabled(&name);
    if xdp || gro == Some(true) {
        let how = if xdp { "an XDP program" } else { "GRO on" };
        check(
            "veth-peer",
            Status::Ok,
            format!("{dev}'s peer {name} has {how}: frames XDP sends into {dev} are delivered"),
            None,
        )
    } else {
        check(
            "veth-peer",
            Status::Warn,
            format!("{dev}'s peer {name} has neither an XDP program nor GRO on: frames sent into {dev} by XDP_TX or a redirect are silently dropped"),
            Some(format!("xdpkit attach pass --dev {name}, or ethtool -K {name} gro on")),
        )
    }
}

/// GRO of `ifname` (ETHTOOL_GGRO), None if the driver does not say.
fn gro_enabled(ifname: &str) -> Option<bool> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GGRO: u32 = 0x2b;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GGRO,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        _pad: [0; 16],
    };
    let bytes = ifname.as_bytes();
    if bytes.len() >= 16 {
        return None;
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a plain datagram socket, closed by OwnedFd below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just opened and is owned here.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: req and value outlive the call; the kernel writes value.data.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    (ret == 0).then_some(value.data != 0)
}

/// Counts xdp:xdp_exception events over `watch`, host-wide.
fn exceptions(watch: Duration) -> Result<Check> {
    let mut ebpf = object::embedded!("doctor").load()?;
    let program: &mut RawTracePoint = ebpf
        .program_mut("xdpkit_xdp_exception")
        .ok_or(Error::MissingProgram { program: "doctor" })?
        .try_into()
        .map_err(|source| Error::Load {
            program: "doctor",
            source,
        })?;
    program.load().map_err(|source| Error::Load {
        program: "doctor",
        source,
    })?;
    program
        .attach("xdp_exception")
        .map_err(|source| Error::Load {
            program: "doctor",
            source,
        })?;
    std::thread::sleep(watch);
    let map = ebpf
        .map(EXCEPTIONS_MAP)
        .ok_or_else(|| object::missing_map(EXCEPTIONS_MAP))?;
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(|e| Error::Map {
        what: "open the exception counters".to_string(),
        source: e.into(),
    })?;
    let mut by_verdict = Vec::new();
    let mut total = 0;
    for slot in 0..EXCEPTION_SLOTS {
        let n: u64 = array
            .get(&slot, 0)
            .map_err(|e| Error::Map {
                what: "read the exception counters".to_string(),
                source: e.into(),
            })?
            .iter()
            .sum();
        if n > 0 {
            let verdict = VERDICTS
                .get(slot as usize)
                .copied()
                .unwrap_or("invalid verdict");
            by_verdict.push(format!("{verdict} {n}"));
            total += n;
        }
    }
    let secs = watch.as_secs_f64();
    Ok(if total == 0 {
        check(
            "exceptions",
            Status::Ok,
            format!("no XDP exceptions on this host in {secs:.1} s"),
            None,
        )
    } else {
        check(
            "exceptions",
            Status::Warn,
            format!(
                "{total} XDP exceptions on this host in {secs:.1} s ({}): frames a program aborted, or whose TX or redirect failed, were dropped",
                by_verdict.join(", ")
            ),
            Some("find the interface with `perf trace -e xdp:xdp_exception`; for a veth, see the veth-peer check".into()),
        )
    })
}

/// (major, minor) of a release string such as `6.18.44-fc-v782`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("5.9.0"), Some((5, 9)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
