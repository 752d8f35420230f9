//! BPF_PROG_TEST_RUN harness: run a program on a crafted frame without
//! attaching it, and read back verdict, output frame, time and counters.

use std::time::Duration;

use aya::{
    programs::{TestRun as _, TestRunOptions},
    Ebpf,
};
use xdpkit_common::{maps::STATS_MAP, ProgramKind, XdpAction};

use crate::{object, stats, stats::ActionTotals, Error, Result};

/// Room for programs that grow the frame (the kernel rejects a short output buffer).
const OUTPUT_SLACK: usize = 256;

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

/// Private copies of xdpkit's programs and maps for test runs: nothing is
/// attached, and counters start at zero for each new harness.
pub struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    /// Loads the embedded object (maps are created; programs load on first use).
    pub fn new() -> Result<Harness> {
        Ok(Harness {
            ebpf: object::load()?,
        })
    }

    /// Points `redirect` at interface `ifindex` (without it, `redirect` passes frames).
    pub fn set_redirect_target(&mut self, ifindex: u32) -> Result<()> {
        object::set_redirect_target(&mut self.ebpf, ifindex)
    }

    /// Runs `program` on `frame` `repeat` times (at least once).
    pub fn run(
        &mut self,
        program: ProgramKind,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let xdp = object::program(&mut self.ebpf, program)?;
        let mut output = vec![0u8; frame.len() + OUTPUT_SLACK];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut output);
        opts.repeat = repeat.max(1);
        let result = xdp.test_run(opts).map_err(|source| Error::TestRun {
            program: program.name(),
            source,
        })?;
        output.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            verdict: XdpAction::from_u32(result.return_value),
            code: result.return_value,
            output,
            ns_per_run: duration_ns(result.duration),
        })
    }

    /// Per-action counters of this harness's programs, summed over CPUs.
    pub fn counters(&self) -> Result<ActionTotals> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or_else(|| object::missing_map(STATS_MAP))?;
        stats::read(map)
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `program` on `frame` in a fresh harness: verdict, output frame and
/// ns per run.
///
/// # Errors
///
/// Loading fails without root (CAP_BPF), or the kernel rejects the frame
/// (BPF_PROG_TEST_RUN wants at least an Ethernet header: 14 bytes).
pub fn test_run(program: ProgramKind, frame: &[u8], repeat: u32) -> Result<TestRunOutcome> {
    Harness::new()?.run(program, frame, repeat)
}
