//! `vessel`: a runc-compatible command line over `vessel_runtime`.
//!
//! Only argument parsing, output formatting and logging live here; every operation is a
//! call into the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;
use vessel_runtime::container::{Container, CreateOptions, ExecOptions};
use vessel_runtime::process::child::error_chain;
use vessel_runtime::{spec, state, terminal, wait};

#[path = "../cli/checkpoint.rs"]
mod checkpoint;
#[path = "../cli/goflags.rs"]
mod goflags;
#[path = "../cli/ops.rs"]
mod ops;

#[derive(Parser, Debug)]
#[command(
    name = "vessel",
    version,
    about = "Run OCI containers (runc-compatible command line)",
    propagate_version = true,
    // runc (urfave/cli) takes a flag given twice, the last one winning; podman passes
    // `checkpoint --leave-running --leave-running` with `--leave-running --export`.
    args_override_self = true
)]
struct Cli {
    /// Root directory for container state (default /run/vessel; for a non-root user
    /// $XDG_RUNTIME_DIR/vessel).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Also write log messages to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log debug messages too.
    #[arg(long, global = true)]
    debug: bool,
    /// Use systemd for cgroups (not available on this host).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Path to the bundle directory.
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Write the container process's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Do not use pivot_root (move the rootfs and chroot instead).
    #[arg(long)]
    no_pivot: bool,
    /// Do not create a new session keyring.
    #[arg(long)]
    no_new_keyring: bool,
    /// Pass N additional fds (3 … 3+N-1) to the container process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a default config.json for a bundle.
    Spec {
        /// Make a spec for a container run by an unprivileged user.
        #[arg(long)]
        rootless: bool,
        /// Bundle directory to write config.json into.
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
    },
    /// Create a container (its init waits for `start`).
    Create {
        #[command(flatten)]
        args: CreateArgs,
        /// Container id.
        id: String,
    },
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        args: CreateArgs,
        /// Return at once, leaving the container running.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
        /// Container id.
        id: String,
    },
    /// Print a container's state as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// List containers.
    List {
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Print only the ids.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        /// Signal every process of the container.
        #[arg(long, short = 'a')]
        all: bool,
        /// Container id.
        id: String,
        /// Signal: name (TERM, SIGTERM) or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        /// Kill a running container first.
        #[arg(long, short = 'f')]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Run a process inside a running container.
    Exec {
        /// JSON file with the process (OCI `process` object).
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        /// Allocate a pseudo-TTY.
        #[arg(long, short = 't')]
        tty: bool,
        /// Return at once, leaving the process running.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Add an environment variable (K=V).
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// Working directory in the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// User as `uid[:gid]`.
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Set no_new_privs for the process.
        #[arg(long)]
        no_new_privs: bool,
        /// Write the process's pid to this file.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the pty master.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Pass N additional fds to the process.
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        /// Container id.
        id: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List a container's processes.
    Ps {
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Container id.
        id: String,
    },
    /// Print the OCI features JSON of this runtime.
    Features,
    /// Freeze every process of a container.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container id.
        id: String,
    },
    /// Change a container's resource limits while it runs.
    Update(ops::UpdateArgs),
    /// Print a container's statistics (--stats) or stream its OOM and stats events.
    Events(ops::EventsArgs),
    /// Checkpoint a running container with CRIU.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Restore a container from a checkpoint.
    Restore(checkpoint::RestoreArgs),
    /// Live-migrate a running container to another state root.
    Migrate(checkpoint::MigrateArgs),
}

/// Where error/debug messages go.
struct Logger {
    file: Option<std::fs::File>,
    json: bool,
    debug: bool,
}

impl Logger {
    fn new(cli: &Cli) -> Logger {
        let file = cli.log.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| eprintln!("vessel: open log {}: {e}", p.display()))
                .ok()
        });
        Logger {
            file,
            json: cli.log_format == LogFormat::Json,
            debug: cli.debug,
        }
    }

    fn write(&mut self, level: &str, msg: &str) {
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": state::now_rfc3339()})
                .to_string()
        } else {
            format!(
                "time=\"{}\" level={level} msg={:?}",
                state::now_rfc3339(),
                msg
            )
        };
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
    }

    fn error(&mut self, msg: &str) {
        self.write("error", msg);
        eprintln!("vessel: {msg}");
    }

    fn warn(&mut self, msg: &str) {
        self.write("warning", msg);
        eprintln!("vessel: warning: {msg}");
    }

    fn debug(&mut self, msg: &str) {
        if self.debug {
            self.write("debug", msg);
            if self.file.is_none() {
                eprintln!("vessel: debug: {msg}");
            }
        }
    }
}

type CliResult = Result<u8, Box<dyn std::error::Error>>;

/// argv, with Go-style `-long` flags (runc's parser takes them; containerd's shim passes
/// `restore -no-subreaper`) rewritten for clap; see [`goflags`].
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let go_style = args.iter().skip(1).any(|a| {
        a.to_str()
            .is_some_and(|s| s.len() > 2 && s.starts_with('-') && !s.starts_with("--"))
    });
    if go_style && !args.is_empty() {
        let rest = args.split_off(1);
        args.extend(goflags::normalize(
            &<Cli as clap::CommandFactory>::command(),
            rest,
        ));
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(args());
    let mut log = Logger::new(&cli);
    log.debug(&format!("{:?}", cli.cmd));
    match run(&cli, &mut log) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log.error(&error_chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn create_options(root: &Path, a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        root: root.to_path_buf(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
    }
}

/// Parses `TERM`, `SIGTERM`, `term` or `15`.
fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("invalid signal number {n}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {s:?}"))
}

fn run(cli: &Cli, log: &mut Logger) -> CliResult {
    if cli.systemd_cgroup {
        return Err("--systemd-cgroup: the systemd cgroup driver is not supported (no systemd on this host)".into());
    }
    let root_buf = match &cli.root {
        Some(r) => r.clone(),
        None => vessel_runtime::userns::default_root()?,
    };
    let root = root_buf.as_path();
    match &cli.cmd {
        Cmd::Checkpoint(a) => checkpoint::checkpoint(root, a),
        Cmd::Restore(a) => checkpoint::restore(root, a),
        Cmd::Migrate(a) => checkpoint::migrate(root, a),
        Cmd::Spec { rootless, bundle } => {
            spec::write_default(bundle, *rootless)?;
            Ok(0)
        }
        Cmd::Create { args, id } => {
            Container::create(id, &args.bundle, &create_options(root, args))?;
            Ok(0)
        }
        Cmd::Start { id } => {
            let mut c = Container::load(root, id)?;
            c.start()?;
            for w in c.take_warnings() {
                log.warn(&w);
            }
            Ok(0)
        }
        Cmd::Run {
            args,
            detach,
            keep,
            id,
        } => {
            let sigs = if *detach {
                None
            } else {
                Some(wait::block_signals()?)
            };
            let mut opts = create_options(root, args);
            // A foreground container with a terminal and no console socket: relay its
            // pty to our own stdio, like runc.
            let receiver = if !*detach
                && opts.console_socket.is_none()
                && spec::load(&args.bundle)
                    .ok()
                    .and_then(|s| s.process().as_ref().and_then(|p| p.terminal()))
                    == Some(true)
            {
                let r = terminal::ConsoleReceiver::new(root)?;
                opts.console_socket = Some(r.path());
                Some(r)
            } else {
                None
            };
            let mut c = Container::create(id, &args.bundle, &opts)?;
            let master = match receiver.as_ref().map(|r| r.receive()).transpose() {
                Ok(m) => m,
                Err(e) => {
                    let _ = c.delete(true);
                    return Err(e.into());
                }
            };
            drop(receiver);
            if let Err(e) = c.start() {
                let _ = Container::load(root, id).map(|c| c.delete(true));
                return Err(e.into());
            }
            for w in c.take_warnings() {
                log.warn(&w);
            }
            let Some(sigs) = sigs else { return Ok(0) };
            let code = match master {
                Some(m) => wait::wait_with_console(c.pid(), &sigs, m)?,
                None => wait::wait_forwarding(c.pid(), &sigs)?,
            };
            if !keep {
                for w in Container::load(root, id)?.delete(true)? {
                    log.warn(&w);
                }
            }
            Ok(u8::try_from(code).unwrap_or(255))
        }
        Cmd::State { id } => {
            let c = Container::load(root, id)?;
            println!("{}", serde_json::to_string_pretty(&c.state())?);
            Ok(0)
        }
        Cmd::List { format, quiet } => {
            let all = Container::list(root)?;
            if *quiet {
                for c in &all {
                    println!("{}", c.id());
                }
            } else if *format == ListFormat::Json {
                let states: Vec<_> = all.iter().map(|c| c.state()).collect();
                println!("{}", serde_json::to_string(&states)?);
            } else {
                let rows: Vec<[String; 6]> = all
                    .iter()
                    .map(|c| {
                        let s = c.state();
                        [
                            s.id,
                            s.pid.to_string(),
                            s.status.to_string(),
                            s.bundle.display().to_string(),
                            s.created,
                            if s.owner.is_empty() {
                                "root".into()
                            } else {
                                s.owner
                            },
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                    &rows,
                );
            }
            Ok(0)
        }
        Cmd::Kill { all, id, signal } => {
            let sig = parse_signal(signal)?;
            Container::load(root, id)?.kill(sig, *all)?;
            Ok(0)
        }
        Cmd::Delete { force, id } => {
            let c = match Container::load(root, id) {
                Ok(c) => c,
                // A create that was killed half-way: clean its directory. Like runc,
                // `delete --force` of a container that does not exist succeeds (shims
                // call it after a failed create).
                Err(e) => match Container::remove_stale(root, id) {
                    Ok(true) => return Ok(0),
                    _ if *force
                        && matches!(
                            e,
                            vessel_runtime::ContainerError::State(state::StateError::NotFound(_))
                        ) =>
                    {
                        return Ok(0)
                    }
                    _ => return Err(e.into()),
                },
            };
            match c.delete(*force) {
                Ok(warnings) => {
                    for w in warnings {
                        log.warn(&w);
                    }
                    Ok(0)
                }
                // Deleted by someone else while we waited for the lock.
                Err(vessel_runtime::ContainerError::State(state::StateError::NotFound(_)))
                    if *force =>
                {
                    Ok(0)
                }
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Exec {
            process,
            tty,
            detach,
            env,
            cwd,
            user,
            no_new_privs,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            command,
        } => {
            let c = Container::load(root, id)?;
            let p = exec_process(
                &c,
                process.as_deref(),
                ExecOverrides {
                    tty: *tty,
                    env,
                    cwd: cwd.as_deref(),
                    user: user.as_deref(),
                    no_new_privs: *no_new_privs,
                    command,
                },
            )?;
            let sigs = if *detach {
                None
            } else {
                Some(wait::block_signals()?)
            };
            let receiver = if !*detach && console_socket.is_none() && *tty {
                Some(terminal::ConsoleReceiver::new(root)?)
            } else {
                None
            };
            let pid = c.exec(
                &p,
                &ExecOptions {
                    pid_file: pid_file.clone(),
                    console_socket: receiver
                        .as_ref()
                        .map(|r| r.path())
                        .or_else(|| console_socket.clone()),
                    preserve_fds: *preserve_fds,
                },
            )?;
            let master = receiver.as_ref().map(|r| r.receive()).transpose()?;
            drop(receiver);
            let Some(sigs) = sigs else { return Ok(0) };
            let code = match master {
                Some(m) => wait::wait_with_console(pid, &sigs, m)?,
                None => wait::wait_forwarding(pid, &sigs)?,
            };
            Ok(u8::try_from(code).unwrap_or(255))
        }
        Cmd::Ps { format, id } => {
            let c = Container::load(root, id)?;
            let pids = c.processes()?;
            if *format == ListFormat::Json {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                let rows: Vec<[String; 2]> = pids
                    .iter()
                    .map(|p| {
                        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                            .map(|b| {
                                String::from_utf8_lossy(&b)
                                    .trim_end_matches('\0')
                                    .replace('\0', " ")
                            })
                            .unwrap_or_default();
                        [p.to_string(), cmd]
                    })
                    .collect();
                print_table(&["PID", "CMD"], &rows);
            }
            Ok(0)
        }
        Cmd::Pause { id } => ops::pause(root, id),
        Cmd::Resume { id } => ops::resume(root, id),
        Cmd::Update(a) => ops::update(root, a),
        Cmd::Events(a) => ops::events(root, a),
        Cmd::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&vessel_runtime::features::features())?
            );
            Ok(0)
        }
    }
}

struct ExecOverrides<'a> {
    tty: bool,
    env: &'a [String],
    cwd: Option<&'a Path>,
    user: Option<&'a str>,
    no_new_privs: bool,
    command: &'a [String],
}

/// The process to exec: `--process FILE`, or the container's process with the command
/// line's overrides (what runc does).
fn exec_process(
    c: &Container,
    file: Option<&Path>,
    o: ExecOverrides<'_>,
) -> Result<oci_spec::runtime::Process, Box<dyn std::error::Error>> {
    if let Some(f) = file {
        let data = std::fs::read(f).map_err(|e| format!("read {}: {e}", f.display()))?;
        let p = spec::parse_process(&data)
            .map_err(|e| format!("process {}: {}", f.display(), error_chain(&e)))?;
        return Ok(p);
    }
    if o.command.is_empty() {
        return Err("exec: no command given (and no --process)".into());
    }
    let spec = c.spec()?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(o.command.to_vec()));
    let mut env = p.env().clone().unwrap_or_default();
    for kv in o.env {
        if !kv.contains('=') {
            return Err(format!("exec: --env {kv:?}: expected KEY=VALUE").into());
        }
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    p.set_terminal(Some(o.tty));
    p.set_console_size(None);
    if let Some(cwd) = o.cwd {
        p.set_cwd(cwd.to_path_buf());
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(u) = o.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        let uid: u32 = uid
            .parse()
            .map_err(|_| format!("exec: --user {u:?}: expected uid[:gid] (numbers)"))?;
        let gid: u32 = match gid {
            Some(g) => g
                .parse()
                .map_err(|_| format!("exec: --user {u:?}: expected uid[:gid] (numbers)"))?,
            None => 0,
        };
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        p.set_user(user);
    }
    Ok(p)
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for (i, h) in header.iter().enumerate() {
        w[i] = h.len();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        for s in ["TERM", "SIGTERM", "term", "15"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGTERM, "{s}");
        }
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn runc_style_command_lines_parse() {
        let cli = Cli::try_parse_from([
            "vessel",
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--console-socket",
            "/c",
            "--no-pivot",
            "--no-new-keyring",
            "--preserve-fds",
            "2",
            "id1",
        ])
        .unwrap();
        assert_eq!(cli.root, Some(PathBuf::from("/r")));
        assert_eq!(cli.log_format, LogFormat::Json);
        match cli.cmd {
            Cmd::Create { args, id } => {
                assert_eq!(id, "id1");
                assert_eq!(args.bundle, PathBuf::from("/b"));
                assert!(args.no_pivot && args.no_new_keyring);
                assert_eq!(args.preserve_fds, 2);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["vessel", "kill", "--all", "c", "9"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Kill { all: true, ref signal, .. } if signal == "9"));
        let cli = Cli::try_parse_from(["vessel", "exec", "-t", "-e", "A=1", "c", "sh", "-c", "x"])
            .unwrap();
        match cli.cmd {
            Cmd::Exec {
                tty, env, command, ..
            } => {
                assert!(tty);
                assert_eq!(env, ["A=1"]);
                assert_eq!(command, ["sh", "-c", "x"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Cli::try_parse_from(["vessel", "pause", "c"]).unwrap().cmd,
            Cmd::Pause { .. }
        ));
        let cli = Cli::try_parse_from([
            "vessel",
            "update",
            "--memory",
            "-1",
            "--pids-limit",
            "5",
            "c",
        ])
        .unwrap();
        assert!(matches!(cli.cmd, Cmd::Update(ref a) if a.memory.as_deref() == Some("-1")));
        assert!(Cli::try_parse_from(["vessel", "nosuchcmd", "c"]).is_err());
    }
}
