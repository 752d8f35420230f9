//! The `route` program's maps: IPv4 and IPv6 forwarding with the kernel's
//! FIB (`bpf_fib_lookup`), out of the interfaces listed in [`ROUTE_PORTS`].

/// DEVMAP_HASH keyed by ifindex: the interfaces `route` may send frames
/// out of (the egress of a FIB answer must be one of them, else the frame
/// goes to the stack).
pub const ROUTE_PORTS: &str = "ROUTE_PORTS";
/// Entries of [`ROUTE_PORTS`].
pub const ROUTE_MAX_PORTS: u32 = 256;
/// Per-CPU array of [`crate::ActionCounter`] by [`RouteOutcome`].
pub const ROUTE_OUTCOMES: &str = "ROUTE_OUTCOMES";
/// One-entry array of [`RouteTrace`]: the last decision, written only by a
/// program loaded with [`ROUTE_TRACE_ON`] set (`route simulate`).
pub const ROUTE_TRACE: &str = "ROUTE_TRACE";
/// The .rodata global that turns [`ROUTE_TRACE`] on (0: off, and the
/// verifier removes the writes).
pub const ROUTE_TRACE_ON: &str = "ROUTE_TRACE_ON";
/// [`RouteTrace::rc`] when no FIB lookup was made.
pub const NO_LOOKUP: u32 = u32::MAX;

/// What `route` did with a frame: forwarded, or handed on (to the next
/// stage, or to the stack after the last) for this reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Sent out of the FIB's egress interface (XDP_REDIRECT).
    Forwarded = 0,
    /// Neither IPv4 nor IPv6 (ARP, VLAN-tagged, ...).
    NotIp = 1,
    /// A header that is cut short or wrong (version, IHL, total length,
    /// IPv4 header checksum): the stack counts and drops it.
    Malformed = 2,
    /// Sent to an Ethernet multicast or broadcast address.
    LinkMulticast = 3,
    /// A source or destination the stack never forwards (IPv4 0/8, 127/8,
    /// multicast and above; IPv6 unspecified, loopback, link-local, multicast).
    Martian = 4,
    /// IPv4 options or an IPv6 hop-by-hop header: the stack reads them.
    Options = 5,
    /// An IPv4 fragment or an IPv6 fragment header.
    Fragment = 6,
    /// TTL or hop limit 1 or 0: the stack answers with ICMP time exceeded.
    TtlExpired = 7,
    /// The FIB says not to forward (BPF_FIB_LKUP_RET_NOT_FWDED): a local
    /// address, a broadcast or multicast route, or no route at all.
    NotForwarded = 8,
    /// A blackhole, unreachable or prohibit route: the stack answers.
    NoRoute = 9,
    /// Forwarding is off on the ingress interface (sysctl).
    ForwardingOff = 10,
    /// The next hop's MAC is not known yet: the stack resolves it
    /// (BPF_FIB_LKUP_RET_NO_NEIGH); later frames are forwarded here.
    NoNeighbour = 11,
    /// Larger than the egress MTU: the stack fragments or answers with
    /// ICMP fragmentation needed / packet too big.
    TooBig = 12,
    /// The egress interface is not one of the ports.
    NotPort = 13,
    /// Any other FIB answer (lightweight tunnels, no source address).
    Other = 14,
}

impl RouteOutcome {
    /// Entries of [`ROUTE_OUTCOMES`].
    pub const COUNT: u32 = 15;

    /// Every outcome in index order.
    pub const ALL: [RouteOutcome; Self::COUNT as usize] = [
        RouteOutcome::Forwarded,
        RouteOutcome::NotIp,
        RouteOutcome::Malformed,
        RouteOutcome::LinkMulticast,
        RouteOutcome::Martian,
        RouteOutcome::Options,
        RouteOutcome::Fragment,
        RouteOutcome::TtlExpired,
        RouteOutcome::NotForwarded,
        RouteOutcome::NoRoute,
        RouteOutcome::ForwardingOff,
        RouteOutcome::NoNeighbour,
        RouteOutcome::TooBig,
        RouteOutcome::NotPort,
        RouteOutcome::Other,
    ];

    /// The name `status`, `route status` and `simulate` print.
    pub const fn name(self) -> &'static str {
        match self {
            RouteOutcome::Forwarded => "forwarded",
            RouteOutcome::NotIp => "not_ip",
            RouteOutcome::Malformed => "malformed",
            RouteOutcome::LinkMulticast => "link_multicast",
            RouteOutcome::Martian => "martian",
            RouteOutcome::Options => "options",
            RouteOutcome::Fragment => "fragment",
            RouteOutcome::TtlExpired => "ttl_expired",
            RouteOutcome::NotForwarded => "not_forwarded",
            RouteOutcome::NoRoute => "no_route",
            RouteOutcome::ForwardingOff => "forwarding_off",
            RouteOutcome::NoNeighbour => "no_neighbour",
            RouteOutcome::TooBig => "too_big",
            RouteOutcome::NotPort => "not_port",
            RouteOutcome::Other => "other",
        }
    }

    /// The outcome of a FIB lookup's return code other than success.
    pub const fn of_fib(rc: u32) -> RouteOutcome {
        match rc {
            1..=3 => RouteOutcome::NoRoute,
            4 => RouteOutcome::NotForwarded,
            5 => RouteOutcome::ForwardingOff,
            7 => RouteOutcome::NoNeighbour,
            8 => RouteOutcome::TooBig,
            _ => RouteOutcome::Other,
        }
    }
}

/// The last decision of a traced `route` program (see [`ROUTE_TRACE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteTrace {
    /// The [`RouteOutcome`].
    pub outcome: u32,
    /// `bpf_fib_lookup`'s return code, [`NO_LOOKUP`] if none was made.
    pub rc: u32,
    /// The egress ifindex the FIB gave.
    pub ifindex: u32,
    /// The egress MTU (when the answer was "too big").
    pub mtu: u32,
    /// 2 (AF_INET) or 10 (AF_INET6).
    pub family: u32,
    /// 1 when the frame was looked up at all.
    pub looked_up: u32,
    /// The next hop: the gateway, or the destination itself on a link
    /// route (IPv4 in the first 4 bytes).
    pub next_hop: [u8; 16],
    /// The egress interface's MAC.
    pub smac: [u8; 6],
    /// The next hop's MAC.
    pub dmac: [u8; 6],
    /// Padding.
    pub pad: [u8; 4],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `#[repr(C)]`, no padding (size checked below).
    unsafe impl aya::Pod for super::RouteTrace {}
}

const _: () = assert!(core::mem::size_of::<RouteTrace>() == 56);
