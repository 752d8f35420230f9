//! The netlink requests xdpkit needs: a device's XDP attachment (rtnetlink
//! `IFLA_XDP`), removing a netlink-attached program, and a device's XDP
//! features (generic netlink family `netdev`).
//!
//! Every call opens its own socket, so it acts in the calling thread's
//! current network namespace (a thread may `setns` first).

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols, Socket, SocketAddr};
use serde::Serialize;

/// Replies larger than this are not expected for one device.
const RECV_BUF: usize = 64 * 1024;
/// Bound on reply messages read for one request.
const MAX_REPLIES: usize = 64;

/// How an XDP program is attached to a device (IFLA_XDP_ATTACHED).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver.
    Native,
    /// Generic XDP.
    Skb,
    /// On the NIC.
    Offload,
    /// Several programs in different modes.
    Multi,
}

impl AttachMode {
    /// `native`, `skb`, `offload` or `multi`.
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
            AttachMode::Offload => "offload",
            AttachMode::Multi => "multi",
        }
    }

    /// The XDP_FLAGS_* mode bit a netlink request for this mode carries.
    const fn flags(self) -> u32 {
        match self {
            AttachMode::Skb => 1 << 1,
            AttachMode::Native => 1 << 2,
            AttachMode::Offload => 1 << 3,
            AttachMode::Multi => 0,
        }
    }
}

/// The XDP state of one interface as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct XdpAttachment {
    /// Mode.
    pub mode: AttachMode,
    /// Program id (for `Multi`, the first of the per-mode ids that is set).
    pub prog_id: u32,
    /// Program in native mode, if any.
    pub drv_prog_id: Option<u32>,
    /// Program in generic mode, if any.
    pub skb_prog_id: Option<u32>,
    /// Program offloaded, if any.
    pub hw_prog_id: Option<u32>,
}

/// A failed netlink request.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be used.
    #[error("netlink {request}: {source}")]
    Io {
        /// Which request.
        request: &'static str,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered with an error.
    #[error("netlink {request}: {source}")]
    Kernel {
        /// Which request.
        request: &'static str,
        /// errno of the answer.
        #[source]
        source: io::Error,
    },
    /// The answer could not be understood.
    #[error("netlink {request}: unexpected reply ({detail})")]
    Malformed {
        /// Which request.
        request: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl NetlinkError {
    /// errno of a kernel answer, for matching ENODEV, EBUSY, ...
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn open(protocol: isize, request: &'static str) -> Result<Socket, NetlinkError> {
    let io = |source| NetlinkError::Io { request, source };
    let mut socket = Socket::new(protocol).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    // Without extended ack the kernel's explanation of a refusal is lost.
    let _ = socket.set_ext_ack(true);
    Ok(socket)
}

/// Sends `request` and collects the reply payloads until the kernel acks,
/// ends a dump, or sends a single non-multipart answer.
fn exchange(
    socket: &Socket,
    request: &'static str,
    bytes: &[u8],
    expect_ack: bool,
) -> Result<Vec<Vec<u8>>, NetlinkError> {
    socket
        .send(bytes, 0)
        .map_err(|source| NetlinkError::Io { request, source })?;
    let mut replies = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    for _ in 0..MAX_REPLIES {
        let len = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|source| NetlinkError::Io { request, source })?;
        let mut offset = 0;
        while offset + 16 <= len {
            let msg = &buf[offset..len];
            let msg_len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
            let msg_type = u16::from_ne_bytes([msg[4], msg[5]]);
            let flags = u16::from_ne_bytes([msg[6], msg[7]]);
            if msg_len < 16 || msg_len > msg.len() {
                return Err(NetlinkError::Malformed {
                    request,
                    detail: format!("message length {msg_len}"),
                });
            }
            match msg_type {
                // NLMSG_ERROR: errno 0 is the ack.
                2 => {
                    let errno = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
                    if errno != 0 {
                        return Err(NetlinkError::Kernel {
                            request,
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    return Ok(replies);
                }
                // NLMSG_DONE
                3 => return Ok(replies),
                _ => replies.push(msg[..msg_len].to_vec()),
            }
            let multipart = flags & 2 != 0;
            if !multipart && !expect_ack {
                return Ok(replies);
            }
            offset += (msg_len + 3) & !3;
        }
    }
    Err(NetlinkError::Malformed {
        request,
        detail: format!("no end after {MAX_REPLIES} replies"),
    })
}

fn route_request(message: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(message));
    nl.finalize();
    let mut bytes = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut bytes);
    bytes
}

/// RTM_GETLINK for `ifindex`; `Ok(None)` if no XDP program is attached.
pub fn xdp_attachment(ifindex: u32) -> Result<Option<XdpAttachment>, NetlinkError> {
    let xdp = get_link(ifindex)?
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        });
    Ok(xdp.and_then(|xdp| attachment_from(&xdp)))
}

/// The link-layer address of `ifindex` (RTM_GETLINK), if it has a 6-byte one.
pub fn mac_address(ifindex: u32) -> Result<Option<[u8; 6]>, NetlinkError> {
    Ok(get_link(ifindex)?
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        }))
}

/// What `xdpkit doctor` needs to know about a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// MTU.
    pub mtu: Option<u32>,
    /// Whether it is a veth.
    pub veth: bool,
    /// The veth peer's (or a VLAN's parent's) ifindex.
    pub peer: Option<u32>,
    /// The peer lives in another network namespace (its ifindex is theirs).
    pub peer_elsewhere: bool,
}

/// MTU, veth-ness and peer of `ifindex` (RTM_GETLINK).
pub fn link_facts(ifindex: u32) -> Result<LinkFacts, NetlinkError> {
    use netlink_packet_route::link::{InfoKind, LinkInfo};
    let mut facts = LinkFacts::default();
    for attr in get_link(ifindex)?.attributes {
        match attr {
            LinkAttribute::Mtu(mtu) => facts.mtu = Some(mtu),
            LinkAttribute::Link(peer) => facts.peer = Some(peer),
            LinkAttribute::LinkNetNsId(_) => facts.peer_elsewhere = true,
            LinkAttribute::LinkInfo(infos) => {
                facts.veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    Ok(facts)
}

fn get_link(ifindex: u32) -> Result<LinkMessage, NetlinkError> {
    const REQ: &str = "RTM_GETLINK";
    let socket = open(protocols::NETLINK_ROUTE, REQ)?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let bytes = route_request(RouteNetlinkMessage::GetLink(link), NLM_F_REQUEST);
    for reply in exchange(&socket, REQ, &bytes, false)? {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).map_err(|e| {
            NetlinkError::Malformed {
                request: REQ,
                detail: e.to_string(),
            }
        })?;
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload {
            return Ok(link);
        }
    }
    Err(NetlinkError::Malformed {
        request: REQ,
        detail: "no link in the answer".to_string(),
    })
}

fn attachment_from(xdp: &[LinkXdp]) -> Option<XdpAttachment> {
    let mut mode = None;
    let (mut prog, mut drv, mut skb, mut hw) = (None, None, None, None);
    for attr in xdp {
        match attr {
            LinkXdp::Attached(XdpAttached::Driver) => mode = Some(AttachMode::Native),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some(AttachMode::Skb),
            LinkXdp::Attached(XdpAttached::Hardware) => mode = Some(AttachMode::Offload),
            LinkXdp::Attached(XdpAttached::Multiple) => mode = Some(AttachMode::Multi),
            LinkXdp::ProgId(id) => prog = Some(*id),
            LinkXdp::DrvProgId(id) => drv = Some(*id),
            LinkXdp::SkbProgId(id) => skb = Some(*id),
            LinkXdp::HwProgId(id) => hw = Some(*id),
            _ => {}
        }
    }
    let mode = mode?;
    let prog_id = prog.or(drv).or(skb).or(hw).unwrap_or(0);
    Some(XdpAttachment {
        mode,
        prog_id,
        drv_prog_id: drv,
        skb_prog_id: skb,
        hw_prog_id: hw,
    })
}

/// Removes a program attached through netlink (iproute2, libxdp, xdp-loader)
/// in `mode`. A program held by a bpf_link stays; the kernel refuses.
pub fn detach_netlink_program(ifindex: u32, mode: AttachMode) -> Result<(), NetlinkError> {
    const REQ: &str = "RTM_SETLINK (IFLA_XDP_FD -1)";
    let socket = open(protocols::NETLINK_ROUTE, REQ)?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    link.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(-1),
        LinkXdp::Flags(mode.flags()),
    ]));
    let bytes = route_request(
        RouteNetlinkMessage::SetLink(link),
        NLM_F_REQUEST | NLM_F_ACK,
    );
    exchange(&socket, REQ, &bytes, true).map(drop)
}

/// A device's XDP feature flags (`enum netdev_xdp_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceXdpFeatures {
    /// The raw bitmask.
    pub bits: u64,
    /// Most fragments per zero-copy frame.
    pub zc_max_segs: u32,
    /// RX metadata the driver gives XDP programs through kfuncs
    /// (`enum netdev_xdp_rx_metadata`: timestamp, hash, VLAN tag).
    pub rx_metadata: u64,
}

const RX_METADATA_NAMES: [&str; 3] = ["timestamp", "hash", "vlan-tag"];

const FEATURE_NAMES: [&str; 7] = [
    "basic",
    "redirect",
    "ndo-xmit",
    "xsk-zerocopy",
    "hw-offload",
    "rx-sg",
    "ndo-xmit-sg",
];

impl DeviceXdpFeatures {
    fn has(&self, bit: u32) -> bool {
        self.bits & (1 << bit) != 0
    }
    /// XDP_ABORTED/DROP/PASS/TX in the driver.
    pub fn basic(&self) -> bool {
        self.has(0)
    }
    /// XDP_REDIRECT.
    pub fn redirect(&self) -> bool {
        self.has(1)
    }
    /// Can be a redirect target (ndo_xdp_xmit).
    pub fn ndo_xmit(&self) -> bool {
        self.has(2)
    }
    /// AF_XDP zero-copy.
    pub fn zero_copy(&self) -> bool {
        self.has(3)
    }
    /// Hardware offload.
    pub fn hw_offload(&self) -> bool {
        self.has(4)
    }
    /// Multi-buffer frames on receive.
    pub fn multi_buffer(&self) -> bool {
        self.has(5)
    }
    /// Multi-buffer frames as a redirect target.
    pub fn ndo_xmit_sg(&self) -> bool {
        self.has(6)
    }
    /// Whether the driver gives XDP programs an RX hash
    /// (`bpf_xdp_metadata_rx_hash`).
    pub fn rx_hash(&self) -> bool {
        self.rx_metadata & (1 << 1) != 0
    }
    /// Names of the RX metadata the driver provides, as the YNL spec
    /// spells them (`hash`: `bpf_xdp_metadata_rx_hash` works on it).
    pub fn rx_metadata_names(&self) -> Vec<&'static str> {
        RX_METADATA_NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.rx_metadata & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect()
    }
    /// Names of the flags that are set, as the kernel's YNL spec spells them.
    pub fn names(&self) -> Vec<&'static str> {
        FEATURE_NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.has(*bit as u32))
            .map(|(_, name)| *name)
            .collect()
    }
}

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;
const NETDEV_A_DEV_XDP_RX_METADATA_FEATURES: u16 = 5;

/// nlmsghdr + genlmsghdr + attributes.
fn genl_request(family: u16, cmd: u8, version: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut msg = vec![0u8; 16];
    msg.extend_from_slice(&[cmd, version, 0, 0]);
    for (kind, value) in attrs {
        let len = 4 + value.len();
        msg.extend_from_slice(&(len as u16).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(value);
        msg.resize((msg.len() + 3) & !3, 0);
    }
    let total = msg.len() as u32;
    msg[0..4].copy_from_slice(&total.to_ne_bytes());
    msg[4..6].copy_from_slice(&family.to_ne_bytes());
    msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg
}

/// Top-level attributes of a generic netlink reply (after both headers).
fn genl_attrs(reply: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = reply.get(20..).unwrap_or(&[]);
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn family_id(socket: &Socket, name: &str) -> Result<u16, NetlinkError> {
    const REQ: &str = "CTRL_CMD_GETFAMILY netdev";
    let mut c_name = name.as_bytes().to_vec();
    c_name.push(0);
    let bytes = genl_request(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        1,
        &[(CTRL_ATTR_FAMILY_NAME, &c_name)],
    );
    for reply in exchange(socket, REQ, &bytes, false)? {
        if let Some((_, v)) =
            genl_attrs(&reply).find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
        {
            return Ok(u16::from_ne_bytes([v[0], v[1]]));
        }
    }
    Err(NetlinkError::Malformed {
        request: REQ,
        detail: "no family id".to_string(),
    })
}

/// A device's XDP features from the `netdev` generic netlink family
/// (kernel >= 6.3).
pub fn device_xdp_features(ifindex: u32) -> Result<DeviceXdpFeatures, NetlinkError> {
    const REQ: &str = "NETDEV_CMD_DEV_GET";
    let socket = open(protocols::NETLINK_GENERIC, REQ)?;
    let family = family_id(&socket, "netdev")?;
    let bytes = genl_request(
        family,
        NETDEV_CMD_DEV_GET,
        1,
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
    );
    let mut features = DeviceXdpFeatures::default();
    let mut found = false;
    for reply in exchange(&socket, REQ, &bytes, false)? {
        for (kind, value) in genl_attrs(&reply) {
            match (kind, value.len()) {
                (NETDEV_A_DEV_XDP_FEATURES, 8) => {
                    features.bits = u64::from_ne_bytes(value.try_into().unwrap_or([0; 8]));
                    found = true;
                }
                (NETDEV_A_DEV_XDP_ZC_MAX_SEGS, 4) => {
                    features.zc_max_segs = u32::from_ne_bytes(value.try_into().unwrap_or([0; 4]));
                }
                (NETDEV_A_DEV_XDP_RX_METADATA_FEATURES, 8) => {
                    features.rx_metadata = u64::from_ne_bytes(value.try_into().unwrap_or([0; 8]));
                }
                _ => {}
            }
        }
    }
    if found {
        Ok(features)
    } else {
        Err(NetlinkError::Malformed {
            request: REQ,
            detail: "no xdp-features attribute".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_program_and_answers_features() {
        assert_eq!(xdp_attachment(1).unwrap(), None);
        // Loopback has no native XDP; the query itself must work.
        let lo = device_xdp_features(1).unwrap();
        assert!(!lo.basic(), "{lo:?}");
    }

    #[test]
    fn unknown_ifindex_is_a_kernel_error() {
        let err = xdp_attachment(0x7fff_fff0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }

    #[test]
    fn feature_names_follow_bits() {
        let f = DeviceXdpFeatures {
            bits: 0b100011,
            zc_max_segs: 0,
            rx_metadata: 0b110,
        };
        assert_eq!(f.names(), ["basic", "redirect", "rx-sg"]);
        assert_eq!(f.rx_metadata_names(), ["hash", "vlan-tag"]);
        assert!(f.multi_buffer() && !f.zero_copy());
    }
}
