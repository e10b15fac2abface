//! The configuration file of a run (`--config FILE`): TOML whose keys are the
//! long names of the run's flags, read before the command line is parsed for
//! good, so that flags given on the command line win.
//!
//! Owns: finding `--config` in the arguments, reading and checking the file
//! (an unknown key or a bad value is an error naming the key and the file),
//! and turning its keys into flags. Must not touch: what the flags mean
//! (`runtime_args`, the job's own arguments).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, Command};

use super::error::AppError;

/// The flag that names the configuration file.
const CONFIG_FLAG: &str = "config";

/// Largest configuration file read.
const CONFIG_BYTES_MAX: u64 = 1 << 20;

/// `argv` with the settings of the configuration file it names (if any)
/// appended as flags, except those the command line gives itself. `command`
/// is the whole command; the file's keys are the flags of the (sub)command
/// that `--config` belongs to: the one the leading subcommand names in `argv`
/// lead to.
pub fn with_config_file(command: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, AppError> {
    let mut root = command.clone();
    root.build();
    // The subcommand path: the leading arguments that name subcommands.
    let mut leaf = &root;
    let mut first_flag = 1;
    for arg in argv.iter().skip(1) {
        match arg.to_str().and_then(|name| leaf.find_subcommand(name)) {
            Some(sub) => {
                leaf = sub;
                first_flag += 1;
            }
            None => break,
        }
    }
    let own = &argv[first_flag.min(argv.len())..];
    let Some(file) = config_path(own) else {
        return Ok(argv);
    };
    if leaf
        .get_arguments()
        .all(|a| a.get_long() != Some(CONFIG_FLAG))
    {
        return Ok(argv);
    }
    let table = read(&file)?;
    let mut extra = Vec::new();
    for (key, value) in &table {
        let bad = |message: String| AppError::ConfigFile {
            file: file.clone(),
            key: Some(key.clone()),
            message,
        };
        let arg = leaf
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != CONFIG_FLAG && !a.is_hide_set())
            .ok_or_else(|| {
                bad(format!(
                    "unknown key '{key}' (the keys are the long flags of the run, \
                     e.g. parallelism = 2)"
                ))
            })?;
        if given(own, key) {
            continue;
        }
        let flag = format!("--{key}");
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                toml::Value::Boolean(true) => extra.push(OsString::from(flag)),
                toml::Value::Boolean(false) => {}
                other => {
                    return Err(bad(format!(
                        "'{key}' is true or false, not a {}",
                        other.type_str()
                    )));
                }
            },
            ArgAction::Set | ArgAction::Append => {
                let values = match value {
                    toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
                        items.iter().collect()
                    }
                    other => vec![other],
                };
                for value in values {
                    let text = scalar(value).ok_or_else(|| {
                        bad(format!(
                            "'{key}' takes a string or a number{}, not a {}",
                            if matches!(arg.get_action(), ArgAction::Append) {
                                " (or a list of them)"
                            } else {
                                ""
                            },
                            value.type_str()
                        ))
                    })?;
                    check_value(key, arg.get_value_parser(), &text).map_err(bad)?;
                    extra.push(OsString::from(format!("{flag}={text}")));
                }
            }
            _ => {
                return Err(bad(format!(
                    "'{key}' cannot be set in a configuration file"
                )));
            }
        }
    }
    let mut argv = argv;
    argv.extend(extra);
    Ok(argv)
}

/// Runs the flag's own value parser on `text` (alone: the flag's relations
/// to others are checked when the whole command line is parsed).
fn check_value(key: &str, parser: &ValueParser, text: &str) -> Result<(), String> {
    let probe = Command::new("config").no_binary_name(true).arg(
        Arg::new("value")
            .long(key.to_owned())
            .value_name("VALUE")
            .action(ArgAction::Set)
            .value_parser(parser.clone()),
    );
    probe
        .try_get_matches_from([format!("--{key}={text}")])
        .map(|_| ())
        .map_err(|e| clap_message(&e))
}

/// The value of `--config FILE` or `--config=FILE` among `args`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let long = format!("--{CONFIG_FLAG}");
    let prefix = format!("--{CONFIG_FLAG}=");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            return None;
        }
        if text == long {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix(&prefix) {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Whether `--key` is on the command line (alone or as `--key=value`).
fn given(args: &[OsString], key: &str) -> bool {
    let long = format!("--{key}");
    let prefix = format!("--{key}=");
    args.iter().any(|a| {
        let text = a.to_string_lossy();
        text == long || text.starts_with(&prefix)
    })
}

fn read(file: &Path) -> Result<toml::Table, AppError> {
    let error = |message: String| AppError::ConfigFile {
        file: file.to_owned(),
        key: None,
        message,
    };
    let size = std::fs::metadata(file)
        .map_err(|e| error(e.to_string()))?
        .len();
    if size > CONFIG_BYTES_MAX {
        return Err(error(format!(
            "{size} bytes: a configuration file has at most {CONFIG_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(file).map_err(|e| error(e.to_string()))?;
    text.parse::<toml::Table>()
        .map_err(|e| error(e.to_string().trim_end().to_owned()))
}

/// A TOML value as the text of a flag's value.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// A clap error's message without its `error: ` prefix and usage lines.
fn clap_message(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}
