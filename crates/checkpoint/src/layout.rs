//! Where things go: `<job-id>/chk-<n>/_metadata` (written last), task files beside
//! it, files shared between incremental checkpoints under `<job-id>/shared/`.
//!
//! Native files (a backend's own files, see [`crate::native_files`]):
//! - private ones (read once, by a restore of this checkpoint) go under the
//!   checkpoint's directory, `<job-id>/chk-<n>/<instance>/<name>`, and are
//!   deleted with it;
//! - shareable ones go to `<job-id>/shared/<instance>/<n>-<name>`, where later
//!   checkpoints may reference them; the coordinator's shared-file registry
//!   decides when they are deleted.
//!
//! `<instance>` is `<uid>-<subtask>` and `<name>` the file's name, both
//! escaped by [`escape_segment`]. Because escaping is injective, the subtask has
//! no `-` and the checkpoint id no `-` either, a path names exactly one
//! (checkpoint, instance, file).

use crate::CheckpointId;

/// Name of the file that makes a checkpoint complete.
pub const METADATA_FILE: &str = "_metadata";

pub fn checkpoint_dir(job_id: &str, id: CheckpointId) -> String {
    format!("{job_id}/chk-{id}/")
}

pub fn metadata_path(job_id: &str, id: CheckpointId) -> String {
    format!("{job_id}/chk-{id}/{METADATA_FILE}")
}

/// Keeps operator uids safe as file names.
pub fn sanitize(uid: &str) -> String {
    uid.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn keyed_state_path(job_id: &str, id: CheckpointId, uid: &str, subtask: u32) -> String {
    format!("{job_id}/chk-{id}/{}-{subtask}.keyed", sanitize(uid))
}

/// The channel state file of one task instance (the in-flight records of an
/// unaligned checkpoint), named after the task's head operator:
/// `<job-id>/chk-<n>/<sanitized uid>-<subtask>.channels`.
pub fn channel_state_path(job_id: &str, id: CheckpointId, uid: &str, subtask: u32) -> String {
    format!("{job_id}/chk-{id}/{}-{subtask}.channels", sanitize(uid))
}

/// Escapes `text` as one path segment, injectively: ASCII letters, digits,
/// `-`, `_` and `.` stay, every other byte becomes `~` and two hex digits (so
/// does `~` itself). Unlike [`sanitize`], two different texts never give the
/// same segment; the common operator uid (`keyed-count`) reads unchanged.
pub fn escape_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("~{byte:02x}"));
        }
    }
    if matches!(out.as_str(), "" | "." | "..") {
        // Not valid as a path segment. An escaped byte's `~` is always followed
        // by two hex digits, so a `~` followed by nothing or `.` comes only
        // from here: still injective.
        out.insert(0, '~');
    }
    out
}

/// The directory name of one operator instance's native files.
fn instance_segment(uid: &str, subtask: u32) -> String {
    format!("{}-{subtask}", escape_segment(uid))
}

/// Where every job's shareable native files live: `<job-id>/shared/`.
pub fn shared_dir(job_id: &str) -> String {
    format!("{job_id}/shared/")
}

/// A shareable native file uploaded by checkpoint `id`:
/// `<job-id>/shared/<uid>-<subtask>/<id>-<name>`.
pub fn shared_file_path(
    job_id: &str,
    uid: &str,
    subtask: u32,
    id: CheckpointId,
    name: &str,
) -> String {
    format!(
        "{}{}/{id}-{}",
        shared_dir(job_id),
        instance_segment(uid, subtask),
        escape_segment(name)
    )
}

/// The id of the checkpoint that wrote a shared file, from its path.
pub fn shared_file_checkpoint(path: &str) -> Option<CheckpointId> {
    let (_, file) = path.rsplit_once('/')?;
    let (id, _) = file.split_once('-')?;
    id.parse().ok()
}

/// A private native file of checkpoint `id`: `<job-id>/chk-<id>/<uid>-<subtask>/<name>`.
pub fn native_private_path(
    job_id: &str,
    id: CheckpointId,
    uid: &str,
    subtask: u32,
    name: &str,
) -> String {
    format!(
        "{}{}/{}",
        checkpoint_dir(job_id, id),
        instance_segment(uid, subtask),
        escape_segment(name)
    )
}

/// A savepoint's directory name under its target directory:
/// `savepoint-<first 6 characters of the job id's tail>-<12 hex digits>`.
pub fn savepoint_dir_name(job_id: &str, unique: u64) -> String {
    let tail: String = job_id
        .chars()
        .rev()
        .filter(char::is_ascii_alphanumeric)
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("savepoint-{tail}-{:012x}", unique & 0xffff_ffff_ffff)
}

/// A savepoint's keyed state file of one instance, relative to the savepoint
/// directory: `state/<uid>/<subtask>.keyed` (uid escaped, so any uid is one
/// directory and none can collide with `_metadata`).
pub fn savepoint_keyed_path(uid: &str, subtask: u32) -> String {
    format!("state/{}/{subtask}.keyed", escape_segment(uid))
}

/// `(job id, checkpoint id)` of a `<job-id>/chk-<n>/_metadata` path.
pub fn parse_metadata_path(path: &str) -> Option<(String, CheckpointId)> {
    let rest = path.strip_suffix(METADATA_FILE)?.strip_suffix('/')?;
    let (job, chk) = rest.rsplit_once('/')?;
    let id = chk.strip_prefix("chk-")?.parse().ok()?;
    Some((job.to_owned(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_paths_round_trip() {
        let path = metadata_path("job-1a", 42);
        assert_eq!(path, "job-1a/chk-42/_metadata");
        assert_eq!(parse_metadata_path(&path), Some(("job-1a".into(), 42)));
        assert_eq!(parse_metadata_path("job/chk-x/_metadata"), None);
        assert_eq!(parse_metadata_path("job/chk-3/a.keyed"), None);
        assert_eq!(
            parse_metadata_path(&native_private_path("job", 3, "op", 0, METADATA_FILE)),
            None,
            "a native file named like metadata is not metadata"
        );
    }

    #[test]
    fn channel_state_paths() {
        assert_eq!(
            channel_state_path("job-1", 7, "count-and-sum", 0),
            "job-1/chk-7/count-and-sum-0.channels"
        );
        assert_eq!(
            channel_state_path("j", 3, "a/b", 2),
            "j/chk-3/a_b-2.channels"
        );
    }

    #[test]
    fn savepoint_paths() {
        assert_eq!(
            savepoint_dir_name("job-18f3a2b4c5d-1f2e", 0xabc),
            "savepoint-5d1f2e-000000000abc"
        );
        assert_eq!(savepoint_keyed_path("a/b", 3), "state/a~2fb/3.keyed");
        assert_eq!(
            savepoint_keyed_path("_metadata", 0),
            "state/_metadata/0.keyed"
        );
    }

    #[test]
    fn native_paths() {
        assert_eq!(shared_dir("j"), "j/shared/");
        assert_eq!(
            shared_file_path("j", "keyed-count", 3, 12, "000042.sst"),
            "j/shared/keyed-count-3/12-000042.sst"
        );
        assert_eq!(
            shared_file_checkpoint(&shared_file_path("j", "a-1", 2, 12, "3-x.sst")),
            Some(12)
        );
        assert_eq!(shared_file_checkpoint("j/shared/a-0/junk"), None);
        assert_eq!(
            native_private_path("j", 12, "keyed-count", 3, "CURRENT"),
            "j/chk-12/keyed-count-3/CURRENT"
        );
        assert_eq!(
            shared_file_path("j", "a/b c", 0, 1, "x/../y"),
            "j/shared/a~2fb~20c-0/1-x~2f..~2fy"
        );
    }

    #[test]
    fn escaping_is_injective() {
        let texts = [
            "", ".", "..", "~", "~2e", "a.b", "a_b", "a b", "a~20b", "a/b", "a~2fb", "~~", "~7e",
            "é", "~c3~a9", "-", "a-0", "a",
        ];
        let mut seen = std::collections::HashMap::new();
        for text in texts {
            let escaped = escape_segment(text);
            assert!(
                !escaped.is_empty() && escaped != "." && escaped != ".." && !escaped.contains('/'),
                "{text:?} -> {escaped:?}"
            );
            if let Some(other) = seen.insert(escaped.clone(), text) {
                panic!("{other:?} and {text:?} both escape to {escaped:?}");
            }
        }
        // Instances: the subtask is the part after the last '-'.
        assert_ne!(instance_segment("a-1", 2), instance_segment("a", 12));
    }
}
