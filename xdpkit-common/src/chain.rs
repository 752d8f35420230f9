//! Stages: the programs of an interface run in order, chained by tail calls.
//!
//! A small root program is what the interface's bpf_link runs. It reads
//! [`ChainState::base`] and tail-calls that slot of the interface's
//! PROG_ARRAY ([`CHAIN_MAP`]). Stage `i` of a chain sits in slot
//! `base + i`; each stage was loaded knowing the slot of the stage after it
//! (the global [`NEXT_GLOBAL`], [`NO_NEXT`] for the last one). A stage ends
//! with a verdict, or with "next": a tail call to that slot; after the last
//! stage "next" is `XDP_PASS`.
//!
//! The array holds two halves of [`MAX_STAGES`] slots. A new chain is loaded
//! into the half not in use and switched in by one update of the root's
//! [`ChainState`], so there is no moment without a program, and frames
//! already inside the old half finish there.

/// Most stages in one chain.
pub const MAX_STAGES: u32 = 8;
/// Slots of the chain PROG_ARRAY: two halves.
pub const CHAIN_SLOTS: u32 = 2 * MAX_STAGES;
/// The chain PROG_ARRAY, shared by the root and every stage of an interface.
pub const CHAIN_MAP: &str = "XDPKIT_CHAIN";
/// The root's one-entry array holding the [`ChainState`].
pub const ROOT_MAP: &str = "XDPKIT_ROOT";
/// The stage global: the slot "next" tail-calls.
pub const NEXT_GLOBAL: &str = "XDPKIT_NEXT";
/// [`NEXT_GLOBAL`] of the last stage: "next" passes.
pub const NO_NEXT: u32 = u32::MAX;
/// Bytes of a stage's program name in [`ChainState`].
pub const STAGE_NAME_LEN: usize = 16;

/// What runs on an interface. Written in one map update: the switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainState {
    /// First slot of the active half (0 or [`MAX_STAGES`]); read by the root.
    pub base: u32,
    /// Number of stages.
    pub len: u32,
    /// A fingerprint of the xdpkit objects that loaded the stages: a
    /// different build replaces them even when the configuration is equal.
    pub build: u64,
    /// The stages' program names, NUL-padded.
    pub stages: [[u8; STAGE_NAME_LEN]; MAX_STAGES as usize],
    /// The attach mode asked for (0 auto, 1 native, 2 skb, 3 offload).
    pub mode: u32,
    /// Generation: how many chains this interface has had.
    pub generation: u32,
}

impl ChainState {
    /// An empty chain in the first half.
    pub const fn empty() -> ChainState {
        ChainState {
            base: 0,
            len: 0,
            build: 0,
            stages: [[0; STAGE_NAME_LEN]; MAX_STAGES as usize],
            mode: 0,
            generation: 0,
        }
    }
}

// SAFETY: plain old data, `#[repr(C)]`, no padding (u32, u32, u64, bytes, u32, u32).
#[cfg(feature = "user")]
unsafe impl aya::Pod for ChainState {}

/// What the RX-hash root (a root loaded bound to its device, see
/// [`RxHashMeta`]) puts in front of the frame, in the XDP metadata area
/// (`data_meta` .. `data`), for the stages after it: the driver's RX hash
/// of the frame's flow. Only the driver knows it, through the kfunc
/// `bpf_xdp_metadata_rx_hash`, which only a device-bound program may call,
/// and a device-bound program cannot sit in a PROG_ARRAY: so the root asks
/// and the stages read it here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxHashMeta {
    /// The driver's hash of the frame's flow.
    pub hash: u32,
    /// [`RX_HASH_MAGIC`]: tells this metadata from another program's.
    pub magic: u32,
}

/// [`RxHashMeta::magic`].
pub const RX_HASH_MAGIC: u32 = 0x7868_7278;
/// The kfunc the RX-hash root calls.
pub const RX_HASH_KFUNC: &str = "bpf_xdp_metadata_rx_hash";
