//! The library's error type. Every variant names the cause and, where the
//! user can act, the fix; `is_usage` tells the CLI which exit code to use.

use std::path::PathBuf;

use crate::{firewall::error::FirewallError, netlink::NetlinkError};

/// A boxed source error from aya, whose error types vary by object.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in xdpkit's library calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named interface is not in this network namespace.
    #[error("interface '{name}' does not exist in this network namespace: check the name with `ip link` (or run xdpkit inside the interface's namespace)")]
    UnknownInterface {
        /// The name given.
        name: String,
    },
    /// An interface name that cannot exist (too long, '/' in it, ...).
    #[error("'{name}' is not a valid interface name ({why}): interface names are 1-15 characters without '/', ':' or spaces")]
    InvalidInterfaceName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The caller lacks the capabilities XDP needs.
    #[error("{action} needs root (CAP_NET_ADMIN and CAP_BPF or CAP_SYS_ADMIN): run it with sudo")]
    NotPrivileged {
        /// What was attempted ("attach", "detach", ...).
        action: &'static str,
    },
    /// The device cannot run XDP in the requested mode.
    #[error("interface '{iface}' does not support {mode} XDP (it supports: {supported}): choose one of those with --mode, or --mode auto")]
    ModeNotSupported {
        /// The interface.
        iface: String,
        /// The mode asked for.
        mode: &'static str,
        /// The modes it does support, comma separated.
        supported: String,
    },
    /// Another tool's XDP program is on the interface.
    #[error("interface '{iface}' already runs XDP program '{prog_name}' (id {prog_id}), not attached by xdpkit: remove it with the tool that attached it, or pass --force to replace it")]
    ForeignProgram {
        /// The interface.
        iface: String,
        /// Kernel id of the program found.
        prog_id: u32,
        /// Its kernel name.
        prog_name: String,
    },
    /// `--force` could not remove another tool's program.
    #[error("cannot remove XDP program id {prog_id} from '{iface}' ({reason}): it is probably held by another tool's bpf_link; remove it with that tool or `bpftool net detach xdp dev {iface}`")]
    ForeignLinkHeld {
        /// The interface.
        iface: String,
        /// Kernel id of the program.
        prog_id: u32,
        /// What the kernel said.
        reason: String,
    },
    /// The firewall's own errors (no firewall, no such rule, bad rules, ...).
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// A balancer command the user can fix.
    #[error(transparent)]
    Balancer(#[from] crate::programs::balancer::error::BalancerError),
    /// A route command the user can fix.
    #[error(transparent)]
    Route(#[from] crate::programs::route::error::RouteError),
    /// A program name xdpkit does not ship.
    #[error("unknown program '{name}': choose one of {known}")]
    UnknownProgram {
        /// The name given.
        name: String,
        /// The programs xdpkit has, comma separated.
        known: String,
    },
    /// Pinned maps of a stage whose layout differs from this build's: made
    /// by another xdpkit version that changed the map.
    #[error("the {stage} state of '{iface}' was made by another xdpkit version (map {map} differs): save what you need (`xdpkit export`), run `xdpkit detach --dev {iface}`, then attach or apply again")]
    IncompatiblePin {
        /// The interface.
        iface: String,
        /// The stage (program) whose maps differ.
        stage: &'static str,
        /// The first map that differs.
        map: String,
    },
    /// A host configuration file that cannot be applied (file:line: key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Options that do not fit together.
    #[error("{0}")]
    InvalidArgument(String),
    /// Nothing of xdpkit's is attached to the interface.
    #[error(
        "no xdpkit program is attached to '{iface}': nothing to {action} (see `xdpkit status`)"
    )]
    NotAttached {
        /// The interface.
        iface: String,
        /// What was attempted.
        action: &'static str,
    },
    /// The kernel refused to load a program.
    #[error("the kernel refused to load program '{program}': {source}")]
    Load {
        /// Program name.
        program: &'static str,
        /// aya's error, including the verifier log.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Parsing an embedded object or creating its maps failed.
    #[error("loading the eBPF object of '{object}' failed: {source}")]
    Object {
        /// The program whose object it is.
        object: &'static str,
        /// aya's error.
        #[source]
        source: aya::EbpfError,
    },
    /// An embedded object lacks its program: xdpkit was built wrong.
    #[error("internal error: the embedded eBPF object has no program '{program}': rebuild xdpkit")]
    MissingProgram {
        /// The program.
        program: &'static str,
    },
    /// Attaching failed for a reason other than the ones above.
    #[error("attaching to '{iface}' failed: {source}")]
    Attach {
        /// The interface.
        iface: String,
        /// aya's error (program, link or syscall).
        #[source]
        source: BoxError,
    },
    /// A map operation failed.
    #[error("{what}: {source}")]
    Map {
        /// Which map and operation.
        what: String,
        /// aya's error.
        #[source]
        source: BoxError,
    },
    /// Pinning or reading a pinned object failed.
    #[error("{what} {}: {source}", path.display())]
    Pin {
        /// Which operation.
        what: &'static str,
        /// The bpffs path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// bpffs is not mounted and could not be mounted.
    #[error("bpffs is not mounted at /sys/fs/bpf and mounting it failed ({0}): run `mount -t bpf bpf /sys/fs/bpf` as root")]
    Bpffs(#[source] std::io::Error),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// BPF_PROG_TEST_RUN failed.
    #[error("BPF_PROG_TEST_RUN of '{program}' failed: {source}")]
    TestRun {
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A key or value type whose size is not the map's: a bug in xdpkit
    /// (or a map made by another build), found before the syscall.
    #[error("internal error: map {map} has {map_bytes}-byte {what}s, the type given for them has {type_bytes} bytes")]
    MapLayout {
        /// The kernel's name of the map.
        map: String,
        /// "key", "value" or "per-CPU value".
        what: &'static str,
        /// The size the map has (values: as batch commands copy them).
        map_bytes: usize,
        /// The size of the type given.
        type_bytes: usize,
    },
    /// A map the embedded object (or the pins made from it) should have
    /// but lacks: xdpkit was built wrong.
    #[error("internal error: the embedded eBPF object has no map {name}: rebuild xdpkit")]
    MissingMap {
        /// The map's object name.
        name: String,
    },
    /// The embedded eBPF object does not parse: xdpkit was built wrong.
    #[error("internal error: the embedded eBPF object is damaged: rebuild xdpkit")]
    DamagedObject(#[source] aya_obj::ParseError),
    /// Simulating one packet failed.
    #[error("packet {index}")]
    Simulation {
        /// The packet's index in the capture.
        index: usize,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// An AF_XDP socket was asked for on an interface whose stages do not
    /// redirect to sockets (no XSKMAP pinned).
    #[error("no stage on '{iface}' delivers frames to AF_XDP sockets: run `xdpkit attach xsk --dev {iface}` (or apply a config with the xsk stage or a firewall rule with action to-userspace)")]
    NoSocketStage {
        /// The interface.
        iface: String,
    },
    /// Zero-copy AF_XDP was asked for on a driver without it (veth has none).
    #[error("the driver of '{iface}' does not support zero-copy AF_XDP (EOPNOTSUPP): use copy mode, or auto to take zero-copy where it exists")]
    ZeroCopyUnsupported {
        /// The interface.
        iface: String,
    },
    /// A fault of xdpkit itself that no other variant names.
    #[error("internal error: {0}")]
    Internal(String),
    /// A raw bpf() syscall failed.
    #[error("{call} failed: {source}")]
    Syscall {
        /// Which command.
        call: &'static str,
        /// errno.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the user can fix this by changing the command or the system
    /// (exit code 2), as opposed to an unexpected failure (exit code 1).
    ///
    /// Exit 2: bad arguments or names, unknown interface, missing privilege,
    /// unsupported mode, another tool's program, no firewall, no such rule,
    /// incompatible pinned state, a bad rule file, bpffs not mounted.
    /// Exit 1: faults of xdpkit or surprises of the kernel: a missing map or
    /// a damaged embedded object, map layouts that differ, a failed load or
    /// test run, unexpected syscall, map, pin or netlink errors.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::UnknownInterface { .. }
            | Error::InvalidInterfaceName { .. }
            | Error::NotPrivileged { .. }
            | Error::ModeNotSupported { .. }
            | Error::ForeignProgram { .. }
            | Error::ForeignLinkHeld { .. }
            | Error::UnknownProgram { .. }
            | Error::InvalidArgument(_)
            | Error::Config(_)
            | Error::IncompatiblePin { .. }
            | Error::NotAttached { .. }
            | Error::NoSocketStage { .. }
            | Error::ZeroCopyUnsupported { .. }
            | Error::Bpffs(_) => true,
            Error::Firewall(e) => e.is_usage(),
            Error::Balancer(_) | Error::Route(_) => true,
            Error::Simulation { source, .. } => source.is_usage(),
            Error::Load { .. }
            | Error::Object { .. }
            | Error::Attach { .. }
            | Error::Map { .. }
            | Error::Pin { .. }
            | Error::Netlink(_)
            | Error::TestRun { .. }
            | Error::MapLayout { .. }
            | Error::MissingMap { .. }
            | Error::MissingProgram { .. }
            | Error::DamagedObject(_)
            | Error::Internal(_)
            | Error::Syscall { .. } => false,
        }
    }
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{FileError, FirewallError, RuleError};

    fn io() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EINVAL)
    }

    /// Exit 2 for what the user or the system must fix, 1 for faults of xdpkit.
    #[test]
    fn errors_map_to_their_exit_class() {
        let fw = |e: FirewallError| Error::from(e);
        let table: Vec<(Error, u8)> = vec![
            (
                Error::UnknownInterface {
                    name: "eth9".into(),
                },
                2,
            ),
            (
                Error::InvalidInterfaceName {
                    name: "a/b".into(),
                    why: "slash",
                },
                2,
            ),
            (Error::NotPrivileged { action: "attach" }, 2),
            (
                Error::ModeNotSupported {
                    iface: "veth0".into(),
                    mode: "offload",
                    supported: "skb".into(),
                },
                2,
            ),
            (
                Error::ForeignProgram {
                    iface: "veth0".into(),
                    prog_id: 7,
                    prog_name: "x".into(),
                },
                2,
            ),
            (
                Error::UnknownProgram {
                    name: "firewal".into(),
                    known: "pass".into(),
                },
                2,
            ),
            (Error::InvalidArgument("bad".into()), 2),
            (
                Error::NotAttached {
                    iface: "veth0".into(),
                    action: "detach",
                },
                2,
            ),
            (Error::Bpffs(io()), 2),
            (
                fw(FirewallError::NoFirewall {
                    iface: "veth0".into(),
                }),
                2,
            ),
            (
                fw(FirewallError::IncompatibleState {
                    iface: "veth0".into(),
                    map: "FW_CONFIG".into(),
                }),
                2,
            ),
            (
                fw(FirewallError::NoSuchRule {
                    iface: "veth0".into(),
                    id: 3,
                }),
                2,
            ),
            (fw(FirewallError::IdsExhausted { largest: 9 }), 2),
            (
                Error::from(crate::programs::route::error::RouteError::NotEnabled {
                    iface: "veth0".into(),
                }),
                2,
            ),
            (fw(FirewallError::DamagedRule { id: 3 }), 2),
            (fw(RuleError::Empty.into()), 2),
            (
                fw(FileError {
                    file: "r.txt".into(),
                    line: 2,
                    source: RuleError::UnknownAction("permit".into()),
                }
                .into()),
                2,
            ),
            (
                Error::MissingMap {
                    name: "FW_CONFIG".into(),
                },
                1,
            ),
            (
                Error::DamagedObject(
                    aya_obj::Object::parse(b"not an ELF file").expect_err("not ELF"),
                ),
                1,
            ),
            (
                Error::MapLayout {
                    map: "m".into(),
                    what: "value",
                    map_bytes: 8,
                    type_bytes: 4,
                },
                1,
            ),
            (Error::Internal("x".into()), 1),
            (
                Error::Syscall {
                    call: "BPF_MAP_UPDATE_BATCH",
                    source: io(),
                },
                1,
            ),
            (
                Error::Map {
                    what: "read FW_CONFIG".into(),
                    source: Box::new(io()),
                },
                1,
            ),
            (
                Error::Pin {
                    what: "cannot pin at",
                    path: "/sys/fs/bpf/x".into(),
                    source: io(),
                },
                1,
            ),
            (
                Error::Simulation {
                    index: 4,
                    source: Box::new(Error::Internal("x".into())),
                },
                1,
            ),
            (
                Error::Simulation {
                    index: 4,
                    source: Box::new(Error::InvalidArgument("x".into())),
                },
                2,
            ),
        ];
        for (error, want) in table {
            let got = if error.is_usage() { 2 } else { 1 };
            assert_eq!(got, want, "{error:?}: {error}");
        }
    }

    #[test]
    fn firewall_errors_read_as_before_and_keep_their_source() {
        let e = Error::from(FirewallError::NoSuchRule {
            iface: "veth0".into(),
            id: 3,
        });
        assert_eq!(
            e.to_string(),
            "no rule 3 on 'veth0': see `xdpkit rule list --dev veth0`"
        );
        let e = Error::DamagedObject(aya_obj::Object::parse(b"junk").expect_err("not ELF"));
        assert!(
            std::error::Error::source(&e).is_some(),
            "aya's error is kept"
        );
    }
}
