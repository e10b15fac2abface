//! Local checkpoint directories never follow a symbolic link.
//!
//! A checkpoint directory is data: a crafted or damaged one may hold a link
//! (`chk-5/x -> /home/me`) or a FIFO where a file should be. Retention and
//! cleanup delete whole checkpoint directories, restore reads files, and uploads
//! write into them, so following a link would let the directory's content
//! choose what on the host is deleted, read or overwritten. This module owns the
//! rules for local directories: a listing walks the tree without following
//! links and reports a link (or any other non-directory entry) as an object of
//! its own, so deleting a prefix removes the link, never its target; reading,
//! sizing or writing an object refuses a path with a link or a non-directory
//! on the way, and reading refuses anything but a regular file.
//!
//! It owns nothing of object stores in general: S3 and memory have no links.

use std::fs::FileType;
use std::path::{Path, PathBuf};

/// Most entries one listing of a local directory returns (a limit on
/// everything: a crafted tree must not exhaust memory).
pub const LIST_ENTRIES_MAX: usize = 10_000_000;

/// Most directory levels a listing descends.
pub const LIST_DEPTH_MAX: usize = 64;

/// Why a local path was refused.
#[derive(Debug)]
pub enum Refusal {
    /// `at` (relative to the root) is a symbolic link.
    Link {
        at: String,
    },
    /// `at` is neither a regular file nor a directory (FIFO, socket, device).
    Special {
        at: String,
    },
    /// A parent of the object is not a directory.
    NotADirectory {
        at: String,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Link { at } => write!(
                f,
                "'{at}' is a symbolic link; checkpoint storage never follows links"
            ),
            Refusal::Special { at } => write!(
                f,
                "'{at}' is not a regular file (a FIFO, socket or device?); refused"
            ),
            Refusal::NotADirectory { at } => write!(f, "'{at}' is not a directory"),
            Refusal::Io(e) => write!(f, "{e}"),
        }
    }
}

/// What the object at `relative` must be for the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Reading or sizing: every parent a real directory, the object itself a
    /// regular file (or absent).
    RegularFile,
    /// Writing or deleting: every parent a real directory (or absent); the
    /// object itself may be anything, since writing replaces it by rename and
    /// deleting a link removes the link.
    ParentsOnly,
}

/// Checks every component of `relative` below `root` without following links.
/// Missing components are fine (the operation then reports not-found or
/// creates them).
pub fn check(root: &Path, relative: &str, expect: Expect) -> Result<(), Refusal> {
    let segments: Vec<&str> = relative
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut at = root.to_path_buf();
    for (i, segment) in segments.iter().enumerate() {
        at.push(segment);
        let shown = || segments[..=i].join("/");
        let last = i + 1 == segments.len();
        let file_type = match std::fs::symlink_metadata(&at) {
            Ok(meta) => meta.file_type(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Refusal::Io(e)),
        };
        if last {
            if expect == Expect::RegularFile {
                if file_type.is_symlink() {
                    return Err(Refusal::Link { at: shown() });
                }
                if !file_type.is_file() {
                    return Err(Refusal::Special { at: shown() });
                }
            }
            return Ok(());
        }
        if file_type.is_symlink() {
            return Err(Refusal::Link { at: shown() });
        }
        if !file_type.is_dir() {
            return Err(Refusal::NotADirectory { at: shown() });
        }
    }
    Ok(())
}

/// One entry of a listing: its path relative to the root, and what it is.
pub struct Entry {
    pub relative: String,
    pub is_file: bool,
}

/// Every non-directory entry under `root/prefix`, recursively, without
/// following links: regular files, and links and special files as entries of
/// their own (so that a prefix delete removes them). Staging files of
/// `object_store` (`name#<digits>`) and names that are not UTF-8 are left out,
/// as `object_store`'s own listing does. A `prefix` that is itself a link
/// lists as that one entry.
pub fn list(root: &Path, prefix: &str) -> Result<Vec<Entry>, Refusal> {
    let prefix = prefix.trim_matches('/');
    check(root, prefix, Expect::ParentsOnly)?;
    let start = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    let meta = match std::fs::symlink_metadata(&start) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Refusal::Io(e)),
    };
    let mut out = Vec::new();
    if !meta.is_dir() {
        // A prefix names a directory; a link or file in its place is an entry
        // to delete, never a directory to descend into.
        if !prefix.is_empty() && !meta.is_file() {
            out.push(Entry {
                relative: prefix.to_owned(),
                is_file: false,
            });
        }
        return Ok(out);
    }
    walk(&start, prefix, 0, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, relative: &str, depth: usize, out: &mut Vec<Entry>) -> Result<(), Refusal> {
    if depth > LIST_DEPTH_MAX {
        return Err(Refusal::Io(std::io::Error::other(format!(
            "'{relative}' is nested deeper than {LIST_DEPTH_MAX} directories"
        ))));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Deleted meanwhile (a concurrent cleanup): nothing to list.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Refusal::Io(e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Refusal::Io(e)),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let child = if relative.is_empty() {
            name.clone()
        } else {
            format!("{relative}/{name}")
        };
        let file_type: FileType = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Refusal::Io(e)),
        };
        if file_type.is_dir() {
            walk(&entry.path(), &child, depth + 1, out)?;
            continue;
        }
        if is_staging(&name) {
            continue;
        }
        if out.len() >= LIST_ENTRIES_MAX {
            return Err(Refusal::Io(std::io::Error::other(format!(
                "more than {LIST_ENTRIES_MAX} entries"
            ))));
        }
        out.push(Entry {
            relative: child,
            is_file: file_type.is_file(),
        });
    }
    Ok(())
}

/// `object_store`'s staging files: `name#<digits>`.
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the entry at `root/relative` (a link itself, never its target),
/// then the directories it leaves empty, up to the root. A missing entry is
/// not an error.
pub fn remove(root: &Path, relative: &str) -> Result<(), Refusal> {
    check(root, relative, Expect::ParentsOnly)?;
    let path: PathBuf = root.join(relative.trim_matches('/'));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Refusal::Io(e)),
    }
    let mut parent = path.parent();
    while let Some(dir) = parent {
        if dir == root || !dir.starts_with(root) || std::fs::remove_dir(dir).is_err() {
            break;
        }
        parent = dir.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names() {
        assert!(is_staging("_metadata#1"));
        assert!(is_staging("a.keyed#12"));
        assert!(!is_staging("a#b"));
        assert!(!is_staging("a#"));
        assert!(!is_staging("plain"));
    }
}
