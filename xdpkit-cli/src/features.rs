//! `xdpkit features`

use serde::Serialize;
use xdpkit::features::{self, DeviceFeatures, KernelFeatures};

use crate::output::{print_json, JsonArg};

/// Show what this kernel supports for XDP (JIT, BTF, bpffs, AF_XDP, version)
/// and, with --dev, the device's XDP features as the kernel's netdev netlink
/// family reports them (basic, redirect, ndo-xmit, zero-copy, multi-buffer)
/// and the attach modes it accepts.
///
/// Examples:
///   xdpkit features
///   xdpkit features --dev veth0 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Also show this interface's XDP features.
    #[arg(short, long, value_name = "IF")]
    pub dev: Option<String>,

    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Serialize)]
struct Report {
    kernel: KernelFeatures,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceFeatures>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = Report {
        kernel: features::kernel(),
        device: args.dev.as_deref().map(features::device).transpose()?,
    };
    if args.json.json {
        return print_json(&report);
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let k = &report.kernel;
    outln!("kernel");
    outln!("  release      {}", k.release);
    outln!("  jit          {}", k.jit);
    outln!("  btf          {}", yes(k.btf));
    outln!(
        "  bpffs        {}",
        if k.bpffs {
            "mounted at /sys/fs/bpf"
        } else {
            "not mounted"
        }
    );
    outln!("  af_xdp       {}", yes(k.af_xdp));
    if let Some(d) = &report.device {
        outln!("device {} (ifindex {})", d.iface, d.ifindex);
        let flags = if d.xdp_features.is_empty() {
            "none".to_string()
        } else {
            d.xdp_features.join(", ")
        };
        outln!("  xdp features {flags}");
        outln!("  basic        {}", yes(d.basic));
        outln!("  redirect     {}", yes(d.redirect));
        outln!("  ndo-xmit     {}", yes(d.ndo_xmit));
        outln!("  zero-copy    {}", yes(d.zero_copy));
        outln!(
            "  multi-buffer {}",
            features::multi_buffer_text(d.multi_buffer)
        );
        outln!("  modes        {}", d.modes.join(", "));
        let rx = if d.rx_metadata.is_empty() {
            "none".to_string()
        } else {
            d.rx_metadata.join(", ")
        };
        outln!("  rx metadata  {rx}");
        outln!("  lb flow hash {}", d.balancer_hash);
    }
    Ok(())
}
