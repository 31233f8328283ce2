//! `--config FILE` (or `ORCHD_CONFIG`): `orchd server` and `orchd agent`
//! read flags from a TOML table whose keys are the subcommand's long flag
//! names (`data-dir = "/var/lib/orch/m1"`, `no-agent = true`, `tls-san =
//! ["10.0.0.1", "10.0.0.2"]`, `agent-port = 10250`). A flag given on the
//! command line (or by its environment variable) wins over the file.
//!
//! The command line is parsed once leniently to learn the subcommand, the
//! file and the flags already given; the file's other keys become
//! `--key=value` arguments after the subcommand's name, and the result is
//! parsed again, strictly.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, Parser};
use toml::{Table, Value};

use crate::cli::Cli;

/// The subcommands whose flags a config file may set.
const SUBCOMMANDS: [&str; 2] = ["server", "agent"];

/// A flag the config file adds: its key and the argument.
struct FileArg {
    key: String,
    arg: String,
}

/// Parses `orchd`'s command line (`args`, the program's name first) with
/// the flags of its config file. A [`clap::Error`] comes back as such (to
/// exit as clap does); the file's own errors name the file.
pub fn parse<I, T>(args: I) -> anyhow::Result<Cli>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command().ignore_errors(true);
    let Ok(matches) = cmd.try_get_matches_from_mut(&args) else {
        return Ok(Cli::try_parse_from(&args)?);
    };
    let Some((name, sub_matches)) = matches.subcommand() else {
        return Ok(Cli::try_parse_from(&args)?);
    };
    let path = match sub_matches.get_one::<PathBuf>("config") {
        Some(path) if SUBCOMMANDS.contains(&name) => path,
        _ => return Ok(Cli::try_parse_from(&args)?),
    };
    let table = read(path)?;
    let sub = cmd
        .find_subcommand(name)
        .context("the parsed subcommand is defined")?;
    let settable: Vec<&Arg> = sub.get_arguments().filter(|a| settable(a)).collect();
    let file_args = file_args(path, name, &settable, sub_matches, &table)?;
    let Some(at) = subcommand_position(&args, name) else {
        return Ok(Cli::try_parse_from(&args)?);
    };
    let mut full = args[..=at].to_vec();
    full.extend(file_args.iter().map(|a| OsString::from(&a.arg)));
    full.extend_from_slice(&args[at + 1..]);
    Cli::try_parse_from(&full).map_err(|e| blame_file(e, path, &file_args))
}

/// The TOML table in `path`; errors name the file and, for syntax errors,
/// the line and column, on one line.
fn read(path: &Path) -> anyhow::Result<Table> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    text.parse::<Table>().map_err(|e| {
        let message = e.message().trim().replace('\n', "; ");
        match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(&text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                anyhow!("{}:{line}:{column}: {message}", path.display())
            }
            None => anyhow!("{}: {message}", path.display()),
        }
    })
}

/// Whether a config file may set `arg`: a long flag, not `--config`,
/// `--help` or `--version`.
fn settable(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && arg.get_id() != "config"
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// The arguments `table` adds to subcommand `name` (whose settable
/// arguments are `args`, parsed as `matches`): none for a flag the command
/// line gives.
fn file_args(
    path: &Path,
    name: &str,
    args: &[&Arg],
    matches: &ArgMatches,
    table: &Table,
) -> anyhow::Result<Vec<FileArg>> {
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(arg) = args.iter().find(|a| a.get_long() == Some(key.as_str())) else {
            let valid: Vec<&str> = args.iter().filter_map(|a| a.get_long()).collect();
            bail!(
                "{}: unknown key `{key}` for `orchd {name}` (valid keys: {})",
                path.display(),
                valid.join(", ")
            );
        };
        if matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let values =
            flag_values(arg, value).map_err(|e| anyhow!("{}: key `{key}`: {e}", path.display()))?;
        out.extend(values.into_iter().map(|arg| FileArg {
            key: key.clone(),
            arg,
        }));
    }
    Ok(out)
}

/// The arguments that give `arg` the file's `value`.
fn flag_values(arg: &Arg, value: &Value) -> Result<Vec<String>, String> {
    let key = arg.get_long().unwrap_or_default();
    if !arg.get_action().takes_values() {
        return match value {
            Value::Boolean(true) => Ok(vec![format!("--{key}")]),
            Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!("expected true or false, not {}", describe(other))),
        };
    }
    let repeatable = matches!(arg.get_action(), ArgAction::Append);
    let scalars = match value {
        Value::Array(items) if repeatable => items.iter().collect(),
        Value::Array(_) => return Err("takes one value, not an array".into()),
        scalar => vec![scalar],
    };
    scalars
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(format!("--{key}={s}")),
            Value::Integer(i) => Ok(format!("--{key}={i}")),
            Value::Float(f) => Ok(format!("--{key}={f}")),
            Value::Boolean(b) => Ok(format!("--{key}={b}")),
            other => Err(format!("expected a value, not {}", describe(other))),
        })
        .collect()
}

/// What kind of TOML value `value` is, for errors.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Where subcommand `name` is in `args`: after the program's name and
/// `orchd`'s own options (`--config FILE` is the only one with a value).
fn subcommand_position(args: &[OsString], name: &str) -> Option<usize> {
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        if arg == name {
            return Some(i);
        }
        let arg = arg.to_str()?;
        if arg == "--config" {
            i += 2;
        } else if arg.starts_with('-') {
            i += 1;
        } else {
            return None;
        }
    }
    None
}

/// `e`, naming the file and key when the invalid value is the file's.
fn blame_file(e: clap::Error, path: &Path, file_args: &[FileArg]) -> anyhow::Error {
    let invalid = matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    );
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return e.into();
    };
    let flag = flag.split(' ').next().unwrap_or_default();
    let Some(file_arg) = file_args
        .iter()
        .find(|a| invalid && a.arg.split('=').next() == Some(flag))
    else {
        return e.into();
    };
    let reason = std::error::Error::source(&e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    anyhow!(
        "{}: key `{}`: invalid value '{value}'{reason}",
        path.display(),
        file_arg.key
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::cli::Command;

    /// A config file holding `text`.
    fn config(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    /// `orchd --config FILE` followed by `args`.
    fn parse_with(file: &tempfile::NamedTempFile, args: &[&str]) -> anyhow::Result<Cli> {
        let mut argv = vec!["orchd".to_string(), "--config".into()];
        argv.push(file.path().display().to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        parse(argv)
    }

    fn server(cli: Cli) -> crate::cli::ServerArgs {
        match cli.command {
            Command::Server(args) => args,
            other => panic!("not a server: {other:?}"),
        }
    }

    #[test]
    fn file_values_fill_absent_flags() {
        let file = config("data-dir = \"/d\"\napi-addr = \"127.0.0.1:7000\"\nagent-port = 0\n");
        let args = server(parse_with(&file, &["server"]).expect("parses"));
        assert_eq!(args.data_dir, Path::new("/d"));
        assert_eq!(args.api_addr.port(), 7000);
        assert_eq!(args.agent_port, 0);
    }

    #[test]
    fn command_line_wins() {
        let file = config("data-dir = \"/d\"\ntls-san = [\"10.0.0.1\"]\n");
        let args = server(
            parse_with(
                &file,
                &["server", "--data-dir", "/cli", "--tls-san", "10.0.0.9"],
            )
            .expect("parses"),
        );
        assert_eq!(args.data_dir, Path::new("/cli"));
        assert_eq!(args.tls_san, ["10.0.0.9"]);
    }

    #[test]
    fn config_after_the_subcommand() {
        let file = config("data-dir = \"/d\"\n");
        let argv = [
            "orchd",
            "server",
            "--config",
            &file.path().display().to_string(),
        ]
        .map(String::from);
        let args = server(parse(argv).expect("parses"));
        assert_eq!(args.data_dir, Path::new("/d"));
    }

    #[test]
    fn file_satisfies_requirements() {
        let file = config("token = \"t\"\n");
        let args = server(parse_with(&file, &["server", "--join", "a:1"]).expect("parses"));
        assert_eq!(args.join.as_deref(), Some("a:1"));
        assert_eq!(args.token.as_deref(), Some("t"));
    }

    #[test]
    fn arrays_repeat() {
        let file = config("tls-san = [\"10.0.0.1\", \"10.0.0.2\"]\n");
        let args = server(parse_with(&file, &["server"]).expect("parses"));
        assert_eq!(args.tls_san, ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn agent_servers_from_the_file() {
        let file = config("server = \"a:1,b:2\"\nlabel = [\"zone=x\"]\n");
        let cli = parse_with(&file, &["agent"]).expect("parses");
        let Command::Agent(args) = cli.command else {
            panic!("not an agent");
        };
        assert_eq!(args.server, ["a:1", "b:2"]);
        assert_eq!(args.labels, [("zone".to_string(), "x".to_string())]);
    }

    #[test]
    fn booleans() {
        let on = config("no-agent = true\n");
        assert!(server(parse_with(&on, &["server"]).expect("parses")).no_agent);
        let off = config("no-agent = false\n");
        assert!(!server(parse_with(&off, &["server"]).expect("parses")).no_agent);
        let wrong = config("no-agent = \"yes\"\n");
        let err = parse_with(&wrong, &["server"]).expect_err("a string is no boolean");
        assert!(format!("{err:#}").contains("no-agent"), "{err:#}");
    }

    #[test]
    fn unknown_key_is_named() {
        let file = config("data-dir = \"/d\"\nbogus-key = 1\n");
        let err = format!("{:#}", parse_with(&file, &["server"]).expect_err("unknown"));
        assert!(err.contains("bogus-key"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        assert!(err.contains("data-dir"), "valid keys listed: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn bad_toml_is_an_error() {
        let file = config("data-dir = \"/d\"\nthis is not toml\n");
        let err = format!("{:#}", parse_with(&file, &["server"]).expect_err("syntax"));
        assert!(
            err.contains(&format!("{}:2:", file.path().display())),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let argv = ["orchd", "--config", "/nonexistent/orchd.toml", "server"];
        let err = format!("{:#}", parse(argv).expect_err("no file"));
        assert!(err.starts_with("/nonexistent/orchd.toml: "), "{err}");
    }

    #[test]
    fn wrong_types_are_named() {
        for text in ["data-dir = { a = 1 }\n", "data-dir = [\"/a\", \"/b\"]\n"] {
            let file = config(text);
            let err = format!("{:#}", parse_with(&file, &["server"]).expect_err(text));
            assert!(err.contains("key `data-dir`"), "{err}");
        }
        let file = config("agent-port = 1.5\n");
        let err = parse_with(&file, &["server"]).expect_err("a float is no port");
        assert!(err.downcast_ref::<clap::Error>().is_none(), "{err:#}");
        assert!(format!("{err:#}").contains("key `agent-port`"), "{err:#}");
    }

    #[test]
    fn other_subcommands_ignore_the_file() {
        let file = config("api-addr = \"127.0.0.1:1\"\n");
        let cli = parse_with(&file, &["status", "--data-dir", "/d"]).expect("parses");
        assert!(matches!(cli.command, Command::Status(_)));
    }

    #[test]
    fn clap_errors_stay_clap_errors() {
        let file = config("data-dir = \"/d\"\n");
        let err = parse_with(&file, &["server", "--no-such-flag"]).expect_err("unknown flag");
        assert!(err.downcast_ref::<clap::Error>().is_some(), "{err:#}");
    }
}
