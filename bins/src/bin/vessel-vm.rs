//! `vessel-vm`: boot a kernel in a KVM microVM. Parses arguments and calls `vessel_vmm`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vessel_vmm::config::{parse_memory_mib, BootProtocol};
use vessel_vmm::devices::virtio::{MacAddr, NetBackend, NetConfig};
use vessel_vmm::{ApStart, ConsoleConfig, VmBuilder, VmConfig, VmExit};

/// Exit status when the guest crashed (triple fault, KVM emulation failure).
const EXIT_CRASH: u8 = 125;
/// Exit status when the timeout passed.
const EXIT_TIMEOUT: u8 = 124;

const AFTER_HELP: &str = "\
Exit status:
  0    the guest shut down (i8042 reset, e.g. Linux `reboot`)
  N    the guest wrote N to the debug-exit port 0xf4 (values above 255 give 255)
  1    VMM error (the error chain is printed on stderr)
  124  --timeout passed
  125  the guest crashed (triple fault, KVM internal error, failed entry)

Examples:
  vessel-vm run --kernel fixtures/.cache/kernel/vmlinuz --cmdline 'console=ttyS0 reboot=k' \\
      --memory 512M --cpus 2
  vessel-vm run --kernel vessel-test-guest --cmdline hello --console file:/tmp/console.log
  vessel-vm run --kernel vmlinux --net tap=vtap0,mac=02:00:00:00:00:01 --timeout 30
  vessel-vm run --config vm.json
  vessel-vm run --config vm.toml --timeout 10    # flags override the file's fields";

#[derive(Parser)]
#[command(name = "vessel-vm", version, about = "Run a KVM microVM", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a kernel and run it until it shuts down.
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// VM description in TOML (a `.toml` file) or JSON (any other name); command-line options
    /// override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kernel image (ELF or bzImage).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    cpus: Option<u8>,
    /// Guest memory, e.g. 256M or 1G (default unit MiB).
    #[arg(long)]
    memory: Option<String>,
    /// Network device: tap=NAME[,mac=MAC] or macvtap=LINK[,mac=MAC] (repeatable).
    #[arg(long = "net")]
    net: Vec<String>,
    /// Serial console: stdio, none or file:PATH.
    #[arg(long)]
    console: Option<String>,
    /// Start every vCPU at the kernel entry (for guests without an AP trampoline).
    #[arg(long)]
    direct_ap_start: bool,
    /// Boot protocol: auto (PVH when the ELF kernel has a PVH entry, else Linux), linux or pvh.
    #[arg(long)]
    boot: Option<String>,
    /// Do not provide ACPI tables (the MP table still describes the CPUs).
    #[arg(long)]
    no_acpi: bool,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long)]
    timeout: Option<f64>,
    /// Do not install the seccomp filters (debugging only).
    #[arg(long, hide = true)]
    no_seccomp: bool,
}

fn parse_net(spec: &str) -> Result<NetConfig, String> {
    let mut backend = None;
    let mut mac = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tap", n)) if !n.is_empty() => backend = Some(NetBackend::Tap { name: n.into() }),
            Some(("macvtap", l)) if !l.is_empty() => {
                backend = Some(NetBackend::Macvtap { link: l.into() })
            }
            Some(("mac", m)) => mac = Some(m.parse::<MacAddr>().map_err(|e| e.to_string())?),
            _ => {
                return Err(format!(
                "invalid --net {spec:?}: expected tap=NAME or macvtap=LINK, optionally ,mac=MAC"
            ))
            }
        }
    }
    let backend = backend.ok_or_else(|| format!("invalid --net {spec:?}: no tap= or macvtap="))?;
    Ok(NetConfig { backend, mac })
}

fn build_config(a: RunArgs) -> Result<(VmConfig, bool), Box<dyn std::error::Error>> {
    let mut cfg = match (&a.config, &a.kernel) {
        (Some(p), _) => VmConfig::from_file(p)?,
        (None, Some(k)) => VmConfig::new(k),
        (None, None) => return Err("--kernel or --config is required".into()),
    };
    if let Some(k) = a.kernel {
        cfg.kernel = k;
    }
    if a.initrd.is_some() {
        cfg.initrd = a.initrd;
    }
    if let Some(c) = a.cmdline {
        cfg.cmdline = c;
    }
    if let Some(n) = a.cpus {
        cfg.vcpus = n;
    }
    if let Some(m) = a.memory {
        cfg.memory_mib = parse_memory_mib(&m)?;
    }
    for n in &a.net {
        cfg.net.push(parse_net(n)?);
    }
    if let Some(c) = a.console {
        cfg.console = c.parse::<ConsoleConfig>()?;
    }
    if a.direct_ap_start {
        cfg.ap_start = ApStart::Direct;
    }
    if let Some(b) = a.boot {
        cfg.boot = b.parse::<BootProtocol>()?;
    }
    if a.no_acpi {
        cfg.acpi = false;
    }
    if a.timeout.is_some() {
        cfg.timeout_secs = a.timeout;
    }
    Ok((cfg, !a.no_seccomp))
}

fn print_error(e: &dyn std::error::Error) {
    eprint!("vessel-vm: error: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        eprint!(": {s}");
        src = s.source();
    }
    eprintln!();
}

fn main() -> ExitCode {
    let Cmd::Run(args) = Cli::parse().cmd;
    let (cfg, seccomp) = match build_config(args) {
        Ok(c) => c,
        Err(e) => {
            print_error(e.as_ref());
            return ExitCode::from(1);
        }
    };
    let mut handle = None;
    let result = VmBuilder::new(cfg).seccomp(seccomp).build().and_then(|vm| {
        handle = Some(vm.handle());
        vm.run()
    });
    let rips = || {
        let rips = handle.as_ref().map(|h| h.last_rips()).unwrap_or_default();
        rips.iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|r| format!("vCPU{i} at RIP {r:#x}")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match result {
        Ok(VmExit::Shutdown) | Ok(VmExit::Stopped) => ExitCode::SUCCESS,
        Ok(VmExit::DebugExit(code)) => ExitCode::from(code.min(255) as u8),
        Ok(VmExit::Timeout) => {
            eprintln!("vessel-vm: timeout: the guest was stopped ({})", rips());
            ExitCode::from(EXIT_TIMEOUT)
        }
        Ok(VmExit::Reset) => {
            eprintln!("vessel-vm: guest crashed: triple fault (KVM_EXIT_SHUTDOWN)");
            ExitCode::from(EXIT_CRASH)
        }
        Ok(VmExit::Crash(why)) => {
            eprintln!("vessel-vm: guest crashed: {why}");
            ExitCode::from(EXIT_CRASH)
        }
        Err(e) => {
            print_error(&e);
            ExitCode::from(1)
        }
    }
}
