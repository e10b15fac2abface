//! Where things go: `<job-id>/chk-<n>/_metadata` (written last), task files beside
//! it, files shared between incremental checkpoints under `<job-id>/shared/`.

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
    }
}
