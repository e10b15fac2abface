//! Names of the sink's prepared transactions:
//! `flowstate:<job id>:<operator uid>:<subtask>:<checkpoint id>`.
//!
//! Job id and uid are escaped (every byte outside `[A-Za-z0-9._-]` becomes
//! `%XX`), so `:` separates the five parts unambiguously, and a part longer than
//! [`MAX_PART`] bytes is cut and suffixed with `~` and a hash of the whole, so a
//! name stays below PostgreSQL's limit of 199 bytes (`GIDSIZE` 200 with the NUL).

/// Every name starts with this.
pub const PREFIX: &str = "flowstate:";

/// Longest escaped job id or uid kept whole.
const MAX_PART: usize = 64;

/// PostgreSQL's longest transaction identifier, in bytes.
pub const MAX_NAME: usize = 199;

/// The escaped form of a job id or uid, as it appears in names.
pub fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_PART {
        // FNV-1a, 64 bits: stable across builds and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in part.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        out.truncate(MAX_PART - 17);
        out.push_str(&format!("~{hash:016x}"));
    }
    out
}

/// The name of the transaction prepared by `subtask` of operator `uid` in job
/// `job` at checkpoint `checkpoint`.
pub fn transaction_name(job: &str, uid: &str, subtask: u32, checkpoint: u64) -> String {
    format!(
        "{PREFIX}{}:{}:{subtask}:{checkpoint}",
        escape(job),
        escape(uid)
    )
}

/// The parts of a name this sink made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName<'a> {
    /// Escaped job id.
    pub job: &'a str,
    /// Escaped uid.
    pub uid: &'a str,
    pub subtask: u32,
    pub checkpoint: u64,
}

/// `None` for a name not made by [`transaction_name`].
pub fn parse(name: &str) -> Option<ParsedName<'_>> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.split(':');
    let (job, uid, subtask, checkpoint) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(ParsedName {
        job,
        uid,
        subtask: subtask.parse().ok()?,
        checkpoint: checkpoint.parse().ok()?,
    })
}

/// `name` as an SQL string literal.
pub fn literal(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_escape_separators() {
        let name = transaction_name("job-1", "sink:pg/counts", 3, 42);
        assert_eq!(name, "flowstate:job-1:sink%3Apg%2Fcounts:3:42");
        assert_eq!(
            parse(&name),
            Some(ParsedName {
                job: "job-1",
                uid: "sink%3Apg%2Fcounts",
                subtask: 3,
                checkpoint: 42
            })
        );
        assert_eq!(parse("flowstate:a:b:c:1"), None);
        assert_eq!(parse("other:a:b:1:1"), None);
    }

    #[test]
    fn long_parts_are_cut_with_a_hash_and_names_fit_postgres() {
        let long = "u".repeat(500);
        let other = format!("{}v", "u".repeat(499));
        let name = transaction_name(&long, &long, u32::MAX, u64::MAX);
        assert!(name.len() <= MAX_NAME, "{} bytes", name.len());
        assert_ne!(escape(&long), escape(&other));
        assert!(parse(&name).is_some());
    }
}
