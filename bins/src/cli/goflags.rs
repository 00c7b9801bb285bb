//! Go-style single-dash long flags (`-no-subreaper`, `-pid-file=x`), as runc's parser
//! (Go's `flag` package under urfave/cli) accepts them and containerd's runc shim passes
//! them (`restore ... -no-subreaper`). clap only knows `--long`, so they are rewritten
//! before parsing.
//!
//! Only what Go's parser would read as a flag is rewritten: a `-name` whose `--name` is a
//! long flag of the command being parsed (or a global one), up to the subcommand's first
//! positional argument (Go stops parsing flags there), so a container's own arguments
//! (`exec ID ls -la`) are never touched.

use std::ffi::OsString;

/// The long flag `name` of `cmd` (or a global one of `root`), if any.
fn long_flag<'a>(
    root: &'a clap::Command,
    cmd: &'a clap::Command,
    name: &str,
) -> Option<&'a clap::Arg> {
    cmd.get_arguments()
        .chain(root.get_arguments().filter(|a| a.is_global_set()))
        .find(|a| a.get_long() == Some(name))
}

fn short_flag<'a>(
    root: &'a clap::Command,
    cmd: &'a clap::Command,
    c: char,
) -> Option<&'a clap::Arg> {
    cmd.get_arguments()
        .chain(root.get_arguments().filter(|a| a.is_global_set()))
        .find(|a| a.get_short() == Some(c))
}

fn takes_value(a: &clap::Arg) -> bool {
    a.get_action().takes_values()
}

/// `args` (argv without the program name) with Go-style long flags of `root`'s commands
/// rewritten to `--name`.
pub fn normalize(root: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut cmd = root;
    let mut in_sub = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str().map(str::to_string) else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            out.push(arg);
            break;
        }
        if let Some(long) = s.strip_prefix("--") {
            let (name, inline) = long
                .split_once('=')
                .map_or((long, false), |(n, _)| (n, true));
            let value = long_flag(root, cmd, name).is_some_and(takes_value) && !inline;
            out.push(arg);
            if value {
                out.extend(it.next());
            }
            continue;
        }
        if let Some(rest) = s.strip_prefix('-').filter(|r| !r.is_empty()) {
            let (name, inline) = rest
                .split_once('=')
                .map_or((rest, false), |(n, _)| (n, true));
            if name.chars().count() > 1 {
                if let Some(a) = long_flag(root, cmd, name) {
                    let value = takes_value(a) && !inline;
                    out.push(OsString::from(format!("--{rest}")));
                    if value {
                        out.extend(it.next());
                    }
                    continue;
                }
                out.push(arg);
                continue;
            }
            let value = name
                .chars()
                .next()
                .and_then(|c| short_flag(root, cmd, c))
                .is_some_and(takes_value)
                && !inline;
            out.push(arg);
            if value {
                out.extend(it.next());
            }
            continue;
        }
        // A positional argument: the subcommand's name, else the end of its flags.
        if !in_sub {
            if let Some(sub) = root
                .get_subcommands()
                .find(|c| c.get_name() == s || c.get_all_aliases().any(|a| a == s))
            {
                cmd = sub;
                in_sub = true;
                out.push(arg);
                continue;
            }
        }
        out.push(arg);
        break;
    }
    out.extend(it);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn cli() -> Command {
        Command::new("vessel")
            .arg(
                Arg::new("root")
                    .long("root")
                    .global(true)
                    .action(ArgAction::Set),
            )
            .subcommand(
                Command::new("restore")
                    .arg(
                        Arg::new("detach")
                            .long("detach")
                            .short('d')
                            .action(ArgAction::SetTrue),
                    )
                    .arg(
                        Arg::new("no-subreaper")
                            .long("no-subreaper")
                            .action(ArgAction::SetTrue),
                    )
                    .arg(Arg::new("pid-file").long("pid-file").action(ArgAction::Set))
                    .arg(
                        Arg::new("bundle")
                            .long("bundle")
                            .short('b')
                            .action(ArgAction::Set),
                    )
                    .arg(Arg::new("id")),
            )
            .subcommand(
                Command::new("exec")
                    .arg(
                        Arg::new("tty")
                            .long("tty")
                            .short('t')
                            .action(ArgAction::SetTrue),
                    )
                    .arg(Arg::new("id"))
                    .arg(Arg::new("cmd").num_args(0..).trailing_var_arg(true)),
            )
    }

    fn norm(args: &[&str]) -> Vec<String> {
        normalize(&cli(), args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            norm(&[
                "-root",
                "/r",
                "restore",
                "--detach",
                "-pid-file",
                "/p",
                "-no-subreaper",
                "-bundle=/b",
                "id"
            ]),
            [
                "--root",
                "/r",
                "restore",
                "--detach",
                "--pid-file",
                "/p",
                "--no-subreaper",
                "--bundle=/b",
                "id"
            ]
        );
    }

    #[test]
    fn values_positionals_and_unknown_flags_are_left_alone() {
        // A flag's value that looks like a flag, short flags, unknown names.
        assert_eq!(
            norm(&[
                "restore",
                "--pid-file",
                "-detach",
                "-b",
                "-tty",
                "-bogus",
                "id"
            ]),
            [
                "restore",
                "--pid-file",
                "-detach",
                "-b",
                "-tty",
                "-bogus",
                "id"
            ]
        );
        // Nothing after the first positional of the subcommand (the container's argv).
        assert_eq!(
            norm(&["exec", "-tty", "id", "ls", "-tty", "-la"]),
            ["exec", "--tty", "id", "ls", "-tty", "-la"]
        );
        assert_eq!(norm(&["exec", "--", "-tty"]), ["exec", "--", "-tty"]);
    }
}
