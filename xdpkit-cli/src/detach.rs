//! `xdpkit detach`

use crate::output::{print_json, DevArg, JsonArg};

/// Detach xdpkit's program from an interface and remove its state
/// (/sys/fs/bpf/xdpkit/<IF>/). Programs of other tools are not touched.
///
/// Example:
///   xdpkit detach --dev veth0
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub dev: DevArg,

    #[command(flatten)]
    pub json: JsonArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = xdpkit::detach(&args.dev.dev)?;
    if args.json.json {
        return print_json(&report);
    }
    match report.prog_id {
        Some(id) => outln!(
            "detached program id {id} from {}; removed {}",
            report.iface,
            report.pin_dir.display()
        ),
        None => outln!(
            "{}: link was already gone; removed {}",
            report.iface,
            report.pin_dir.display()
        ),
    }
    Ok(())
}
