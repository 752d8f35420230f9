//! `xdpkit dump`

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use xdpkit::{
    dump::{Dump, DumpRequest, PcapngSink},
    XdpAction,
};

use crate::{output::DevArg, signals};

/// Capture the frames the xdpkit program on an interface gives a verdict
/// (all, or only drop, pass, tx, redirect or aborted) into a pcapng file:
/// the program itself copies each selected frame (1 in --sample, per CPU,
/// the first --snaplen bytes) into a ring buffer after its verdict, so
/// redirected frames are included and no tracing is needed. Each packet
/// carries a comment `verdict=drop rule=3` (the deciding firewall rule, or
/// `rule=-`); timestamps are in nanoseconds. Stops after --count frames or
/// on Ctrl-C. Without a dump running, the programs pay one map read a frame.
///
/// -w - writes to stdout, e.g. `xdpkit dump --dev eth0 -w - | tcpdump -r -`.
///
/// Examples:
///   xdpkit dump --dev eth0 --action drop -w drops.pcapng
///   xdpkit dump --dev eth0 --sample 100 --snaplen 128 --count 1000 -w sample.pcapng
///   tshark -r drops.pcapng -T fields -e frame.comment
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub dev: DevArg,

    /// Verdict to capture.
    #[arg(long, value_enum, default_value_t = ActionArg::All)]
    pub action: ActionArg,

    /// Capture one frame in N (per CPU).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: u32,

    /// Bytes kept from the start of each frame (at most 9216: jumbo frames whole).
    #[arg(long, value_name = "B", default_value_t = 9216, value_parser = clap::value_parser!(u32).range(1..=9216))]
    pub snaplen: u32,

    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Output file, or - for stdout.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: PathBuf,
}

/// `--action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionArg {
    /// Every verdict.
    All,
    /// XDP_DROP.
    Drop,
    /// XDP_PASS.
    Pass,
    /// XDP_TX.
    Tx,
    /// XDP_REDIRECT.
    Redirect,
    /// XDP_ABORTED.
    Aborted,
}

/// The capture's output, `-` for stdout, and how messages name it; created
/// only when called, so commands call it after their checks.
pub(crate) fn open_output(path: &std::path::Path) -> anyhow::Result<(Box<dyn Write>, String)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::stdout().lock()), "stdout".to_string()));
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok((Box::new(BufWriter::new(file)), path.display().to_string()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let actions = match args.action {
        ActionArg::All => XdpAction::ALL.to_vec(),
        ActionArg::Drop => vec![XdpAction::Drop],
        ActionArg::Pass => vec![XdpAction::Pass],
        ActionArg::Tx => vec![XdpAction::Tx],
        ActionArg::Redirect => vec![XdpAction::Redirect],
        ActionArg::Aborted => vec![XdpAction::Aborted],
    };
    let to_stdout = args.write.as_os_str() == "-";
    // Checked before the file is created: a refused dump leaves nothing behind.
    let mut dump = Dump::start(&DumpRequest {
        iface: args.dev.dev.clone(),
        actions,
        sample: args.sample,
        snaplen: args.snaplen,
    })?;
    let (out, target) = open_output(&args.write)?;
    let mut sink = PcapngSink::new(out, &args.dev.dev, args.snaplen)?;
    signals::stop_on_interrupt();
    eprintln!(
        "xdpkit dump: {} frames of {} (1 in {}, {} bytes each) to {target}; Ctrl-C stops",
        args.action.name(),
        args.dev.dev,
        args.sample,
        args.snaplen
    );
    let mut written: u64 = 0;
    while !signals::stopped() && args.count.is_none_or(|n| written < n) {
        if let Some(frame) = dump.next(Duration::from_millis(200))? {
            sink.write(&frame)?;
            written += 1;
            if to_stdout {
                sink.flush()?;
            }
        }
    }
    drop(dump);
    sink.flush()?;
    eprintln!("xdpkit dump: {written} frames written to {target}");
    Ok(())
}

impl ActionArg {
    fn name(self) -> &'static str {
        match self {
            ActionArg::All => "all",
            ActionArg::Drop => "drop",
            ActionArg::Pass => "pass",
            ActionArg::Tx => "tx",
            ActionArg::Redirect => "redirect",
            ActionArg::Aborted => "aborted",
        }
    }
}
