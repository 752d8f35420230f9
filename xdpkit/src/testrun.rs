//! BPF_PROG_TEST_RUN harness: run a program, or a chain of stages, on a
//! crafted frame without attaching it, and read back verdict, output frame,
//! time and each stage's counters.
//!
//! A chain needs its maps shared between objects, which aya does through
//! pins: a harness installs its chain under a private directory on bpffs
//! (removed when it is dropped), with the same code as an interface's.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    programs::{TestRun as _, TestRunOptions},
    Ebpf,
};
use xdpkit_common::XdpAction;

use crate::{
    chain::{self, StageSpec},
    mode::Mode,
    object,
    pins::{self, IfaceLock, PinDir},
    programs::Program,
    stats::{self, ActionTotals},
    Error, Result,
};

/// Room for programs that grow the frame (the kernel rejects a short output buffer).
const OUTPUT_SLACK: usize = 256;

/// Where harnesses keep their private chains.
const HARNESS_ROOT: &str = "/sys/fs/bpf/xdpkit-harness";

/// Result of running a program on one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The verdict (None if the program returned a code outside `enum xdp_action`).
    pub verdict: Option<XdpAction>,
    /// The raw return code.
    pub code: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// Mean time of one run, in nanoseconds, as the kernel measured it.
    pub ns_per_run: u64,
}

/// A private chain of stages for test runs: nothing is attached, and
/// counters start at zero for each new harness.
pub struct Harness {
    dir: PinDir,
    root: Ebpf,
    lock: IfaceLock,
}

impl Harness {
    /// A harness running `stages` in order (as `xdpkit attach a,b,c` would).
    pub fn new(stages: &[StageSpec]) -> Result<Harness> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        pins::ensure_bpffs()?;
        let name = format!(
            "h{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = PinDir::under(&PathBuf::from(HARNESS_ROOT), &name)?;
        dir.create()?;
        let lock = IfaceLock::take(&dir)?;
        let root = chain::load_root(&dir, &name)?;
        let mut harness = Harness { dir, root, lock };
        harness.install(stages)?;
        Ok(harness)
    }

    /// A harness with one stage and no settings.
    pub fn single(program: &'static dyn Program) -> Result<Harness> {
        Harness::new(&[StageSpec {
            program,
            settings: toml::Table::new(),
        }])
    }

    /// Switches to another chain, as `attach`/`apply` does on an interface:
    /// stages kept keep their maps and counters.
    pub fn install(&mut self, stages: &[StageSpec]) -> Result<()> {
        let name = self.dir.ifname().to_string();
        chain::install(
            &mut self.root,
            &self.dir,
            &name,
            Mode::Auto,
            stages,
            &self.lock,
        )?;
        Ok(())
    }

    /// Runs the chain on `frame` `repeat` times (at least once).
    pub fn run(&mut self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        let program = chain::root_program(&mut self.root)?;
        run_program(program, "chain", &[], frame, repeat)
    }

    /// A stage's counters (per action and "next"), summed over CPUs.
    pub fn counters(&self, stage: &str) -> Result<ActionTotals> {
        stats::read_pinned(&self.dir.stage(stage).file(pins::STATS))
    }

    /// The directory of a stage's pinned maps.
    pub fn stage_dir(&self, stage: &str) -> PinDir {
        self.dir.stage(stage)
    }

    /// The chain's own pin directory (its shared maps: the XSKMAP, ...).
    pub fn dir(&self) -> &PinDir {
        &self.dir
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Err(e) = self.dir.remove() {
            tracing::warn!("harness cleanup: {e}");
        }
    }
}

/// One program loaded on its own, outside any chain ("next" passes), with
/// private maps: the reference for what a chain costs.
pub struct Alone {
    ebpf: Ebpf,
    program: &'static dyn Program,
}

impl Alone {
    /// Loads `program` with private maps and empty settings.
    pub fn new(program: &'static dyn Program) -> Result<Alone> {
        let mut ebpf = program.object().load()?;
        object::program(&mut ebpf, program.symbol(), program.name())?;
        Ok(Alone { ebpf, program })
    }

    /// Its maps, to set a program's state before a run.
    pub fn maps(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Runs it on `frame` `repeat` times.
    pub fn run(&mut self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        self.run_with_meta(&[], frame, repeat)
    }

    /// Runs it on `frame` with `meta` in the metadata area in front of it
    /// (at most 32 bytes, a multiple of 4), as a program before it in the
    /// chain (the RX-hash root) would leave it. The output is the frame
    /// without its metadata.
    pub fn run_with_meta(
        &mut self,
        meta: &[u8],
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let program = object::program(&mut self.ebpf, self.program.symbol(), self.program.name())?;
        run_program(program, self.program.name(), meta, frame, repeat)
    }
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it: data, data_end,
/// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
const XDP_MD_LEN: usize = 24;

fn run_program(
    xdp: &mut aya::programs::Xdp,
    name: &'static str,
    meta: &[u8],
    frame: &[u8],
    repeat: u32,
) -> Result<TestRunOutcome> {
    let data: Vec<u8> = meta.iter().chain(frame).copied().collect();
    let mut output = vec![0u8; data.len() + OUTPUT_SLACK];
    // Offsets from the start of the buffer (the metadata): the frame
    // starts after it, and the kernel wants data_end at the buffer's end.
    let mut ctx = [0u8; XDP_MD_LEN];
    ctx[..4].copy_from_slice(&(meta.len() as u32).to_ne_bytes());
    ctx[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    let mut ctx_out = [0u8; XDP_MD_LEN];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&data);
    opts.data_out = Some(&mut output);
    if !meta.is_empty() {
        opts.ctx_in = Some(&ctx);
        opts.ctx_out = Some(&mut ctx_out);
    }
    opts.repeat = repeat.max(1);
    let result = xdp.test_run(opts).map_err(|source| Error::TestRun {
        program: name,
        source,
    })?;
    output.truncate(result.data_size_out as usize);
    if !meta.is_empty() {
        // The output starts at the metadata, which may have moved with the
        // frame (bpf_xdp_adjust_head carries it along); ctx_out says where
        // the frame starts.
        let start = u32::from_ne_bytes(ctx_out[..4].try_into().expect("4 bytes")) as usize;
        output.drain(..start.min(output.len()));
    }
    Ok(TestRunOutcome {
        verdict: XdpAction::from_u32(result.return_value),
        code: result.return_value,
        output,
        ns_per_run: duration_ns(result.duration),
    })
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `program` alone on `frame` in a fresh harness: verdict, output
/// frame and ns per run.
///
/// # Errors
///
/// Loading fails without root (CAP_BPF), or the kernel rejects the frame
/// (BPF_PROG_TEST_RUN wants at least an Ethernet header: 14 bytes).
pub fn test_run(
    program: &'static dyn Program,
    frame: &[u8],
    repeat: u32,
) -> Result<TestRunOutcome> {
    Alone::new(program)?.run(frame, repeat)
}
