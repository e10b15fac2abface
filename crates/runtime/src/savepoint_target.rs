//! Which savepoint targets a request from outside the process may name.
//!
//! Owns the policy ([`SavepointTargetPolicy`]) and its errors: parsing a target
//! or root (a path or URL), the `.`/`..`/empty-segment rules, the "under a root"
//! rule and the symbolic-link escape check. It must not touch jobs, storage or
//! the HTTP layer: `JobController::trigger_savepoint` calls it, and only it.

/// Which savepoint targets a request from outside may name: the one place that
/// decides it (see [`JobController::trigger_savepoint`]).
///
/// A named target must be an absolute path (or `file://` path) or a URL, with
/// no `.`, `..` or empty segment, and — unless [`SavepointTargetPolicy::any`] —
/// equal to or under the job's savepoint directory or one of the roots: for a
/// URL the same scheme and bucket (authority) and a path under the root's. A
/// local target must not leave its root through a symbolic link in the part
/// that already exists. The job's own savepoint directory, used when a request
/// names none, is configuration and is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavepointTargetPolicy {
    roots: Vec<String>,
    any: bool,
}

/// Why a savepoint target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavepointTargetError {
    #[error("the savepoint target is empty")]
    Empty,
    #[error("savepoint target '{0}' is relative: name an absolute path or a URL")]
    Relative(String),
    #[error(
        "savepoint target '{target}' has a '{segment}' path segment: name the directory \
         without '.', '..' or empty segments"
    )]
    Segment { target: String, segment: String },
    #[error("savepoint target '{target}' is not a URL: {reason}")]
    BadUrl { target: String, reason: String },
    #[error("savepoint target '{target}' is not under an allowed savepoint directory ({allowed})")]
    Outside { target: String, allowed: String },
    #[error(
        "savepoint target '{target}' leaves the allowed directory '{root}' through a symbolic link"
    )]
    Symlink { target: String, root: String },
    #[error("savepoint root '{root}' is not usable: {reason}")]
    BadRoot { root: String, reason: String },
}

impl SavepointTargetError {
    /// Whether the target is well-formed but not allowed (as opposed to malformed).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            SavepointTargetError::Outside { .. } | SavepointTargetError::Symlink { .. }
        )
    }
}

/// A target or root, parsed: a local absolute path or a URL, as segments.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Local(Vec<String>),
    Url {
        scheme: String,
        authority: String,
        path: Vec<String>,
    },
}

impl Place {
    /// Whether `self` is `root` or lies under it.
    fn is_within(&self, root: &Place) -> bool {
        match (self, root) {
            (Place::Local(path), Place::Local(root)) => path.starts_with(root),
            (
                Place::Url {
                    scheme,
                    authority,
                    path,
                },
                Place::Url {
                    scheme: root_scheme,
                    authority: root_authority,
                    path: root_path,
                },
            ) => {
                scheme == root_scheme && authority == root_authority && path.starts_with(root_path)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local(path) => write!(f, "/{}", path.join("/")),
            Place::Url {
                scheme,
                authority,
                path,
            } => write!(f, "{scheme}://{authority}/{}", path.join("/")),
        }
    }
}

/// Splits `target` into a [`Place`], refusing relative paths and `.`, `..`
/// (also percent-encoded) and empty segments. One trailing `/` is allowed.
fn parse_target(target: &str) -> Result<Place, SavepointTargetError> {
    if target.trim().is_empty() {
        return Err(SavepointTargetError::Empty);
    }
    let segments = |path: &str| -> Result<Vec<String>, SavepointTargetError> {
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.is_empty() {
            return Ok(Vec::new());
        }
        path.split('/')
            .map(|segment| {
                let decoded = segment.replace("%2e", ".").replace("%2E", ".");
                if segment.is_empty() || decoded == "." || decoded == ".." {
                    Err(SavepointTargetError::Segment {
                        target: target.to_owned(),
                        segment: segment.to_owned(),
                    })
                } else {
                    Ok(segment.to_owned())
                }
            })
            .collect()
    };
    // What is a URL and what a local path is the storage's decision (it
    // opens the target): a scheme is a plain name starting with a letter.
    use flowstate_checkpoint::Location;
    let (scheme, rest) = match Location::parse(target) {
        Location::Url { scheme, rest } => (scheme, rest),
        Location::Path(local) | Location::FileUrl(local) => {
            let Some(path) = local.strip_prefix('/') else {
                return Err(SavepointTargetError::Relative(target.to_owned()));
            };
            return Ok(Place::Local(segments(path)?));
        }
    };
    let bad_url = |reason: &str| SavepointTargetError::BadUrl {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    if rest.contains(['?', '#', '\\']) {
        return Err(bad_url("a query, fragment or backslash is not allowed"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok(Place::Url {
        scheme: scheme.to_ascii_lowercase(),
        authority: authority.to_owned(),
        path: segments(path)?,
    })
}

/// A configured root (trusted): a relative local path is made absolute against
/// the working directory and `.`/`..` are resolved lexically.
fn parse_root(root: &str) -> Result<Place, SavepointTargetError> {
    let bad = |reason: String| SavepointTargetError::BadRoot {
        root: root.to_owned(),
        reason,
    };
    if root.trim().is_empty() {
        return Err(bad("it is empty".into()));
    }
    let Some(local) = flowstate_checkpoint::Location::parse(root).local_path() else {
        return parse_target(root).map_err(|e| bad(e.to_string()));
    };
    let absolute = std::path::absolute(local).map_err(|e| bad(e.to_string()))?;
    let mut segments: Vec<String> = Vec::new();
    for component in absolute.components() {
        match component {
            std::path::Component::Normal(name) => match name.to_str() {
                Some(name) => segments.push(name.to_owned()),
                None => return Err(bad("it is not UTF-8".into())),
            },
            std::path::Component::ParentDir => {
                segments.pop();
            }
            _ => {}
        }
    }
    Ok(Place::Local(segments))
}

/// `segments` as a path, with the part that exists resolved (symbolic links
/// followed by `canonicalize`) and the rest appended as is. Looks at most one
/// directory per segment.
fn resolve_existing(segments: &[String]) -> std::path::PathBuf {
    let path = |n: usize| -> std::path::PathBuf {
        let mut p = std::path::PathBuf::from("/");
        p.extend(&segments[..n]);
        p
    };
    for existing in (0..=segments.len()).rev() {
        if let Ok(mut resolved) = std::fs::canonicalize(path(existing)) {
            resolved.extend(&segments[existing..]);
            return resolved;
        }
    }
    path(segments.len())
}

impl SavepointTargetPolicy {
    /// Requests may name the job's savepoint directory, and directories under it.
    pub fn savepoint_dir_only() -> Self {
        Self::default()
    }

    /// Requests may also name `roots` (paths or URLs) and directories under them.
    /// A relative root is taken against the working directory now.
    pub fn with_roots<I, S>(roots: I) -> Result<Self, SavepointTargetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut checked = Vec::new();
        for root in roots {
            checked.push(parse_root(root.as_ref())?.to_string());
        }
        Ok(Self {
            roots: checked,
            any: false,
        })
    }

    /// Requests may name any well-formed target (absolute or a URL, no dot or
    /// empty segments): for a job whose control API only trusted callers reach.
    pub fn any() -> Self {
        Self {
            roots: Vec::new(),
            any: true,
        }
    }

    /// The configured roots (besides the job's savepoint directory).
    pub fn roots(&self) -> &[String] {
        &self.roots
    }

    /// Whether any well-formed target is allowed.
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Checks the target a request named against this policy, with
    /// `savepoint_dir` (the job's default target) as one more root. Returns the
    /// target to use.
    pub fn check(
        &self,
        target: &str,
        savepoint_dir: Option<&str>,
    ) -> Result<String, SavepointTargetError> {
        let place = parse_target(target)?;
        if self.any {
            return Ok(target.to_owned());
        }
        let mut roots = Vec::new();
        if let Some(dir) = savepoint_dir.filter(|d| !d.trim().is_empty()) {
            // The job's own configuration; unusable, it only allows nothing.
            roots.extend(parse_root(dir).ok());
        }
        for root in &self.roots {
            roots.extend(parse_root(root).ok());
        }
        let Some(root) = roots.iter().find(|root| place.is_within(root)) else {
            let allowed = if roots.is_empty() {
                "none is configured".to_owned()
            } else {
                roots
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(SavepointTargetError::Outside {
                target: target.to_owned(),
                allowed,
            });
        };
        if let (Place::Local(path), Place::Local(root_path)) = (&place, root) {
            // The lexical check above is not enough where a directory under the
            // root is a symbolic link to elsewhere.
            if !resolve_existing(path).starts_with(resolve_existing(root_path)) {
                return Err(SavepointTargetError::Symlink {
                    target: target.to_owned(),
                    root: root.to_string(),
                });
            }
        }
        Ok(target.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_absolute_clean_and_under_a_root() {
        let policy = SavepointTargetPolicy::with_roots(["/srv/extra", "s3://bucket/sp"]).unwrap();
        let dir = Some("/srv/sp");
        for allowed in [
            "/srv/sp",
            "/srv/sp/",
            "/srv/sp/a/b",
            "file:///srv/sp/a",
            "file://localhost/srv/sp/a",
            "/srv/extra/x",
            "s3://bucket/sp",
            "s3://bucket/sp/x",
            "S3://bucket/sp/x",
        ] {
            assert_eq!(
                policy.check(allowed, dir).as_deref(),
                Ok(allowed),
                "{allowed}"
            );
        }
        for (refused, forbidden) in [
            ("/etc/x", true),
            ("/srv/spx", true),
            ("/srv", true),
            ("s3://bucket/other", true),
            ("s3://other/sp", true),
            ("http://169.254.169.254/sp", true),
            ("gs://bucket/sp", true),
            ("sp", false),
            ("./sp", false),
            ("", false),
            ("/srv/sp/../../etc", false),
            ("/srv/sp/./x", false),
            ("/srv/sp//x", false),
            ("/srv/sp/%2e%2E/x", false),
            ("s3://bucket/sp/../x", false),
            ("s3://bucket/sp?x=1", false),
            ("://x", false),
            // Not a scheme (it starts with a digit): a relative path, as the
            // storage would open it.
            ("1x://bucket/sp", false),
            ("file://srv/sp", false),
        ] {
            let error = policy.check(refused, dir).unwrap_err();
            assert_eq!(error.is_forbidden(), forbidden, "{refused}: {error}");
        }
        // Without a savepoint directory or roots nothing may be named.
        let error = SavepointTargetPolicy::default()
            .check("/srv/sp", None)
            .unwrap_err();
        assert!(error.to_string().contains("none is configured"), "{error}");
        // `any` still wants a well-formed target.
        assert!(SavepointTargetPolicy::any().check("/etc/x", None).is_ok());
        assert!(SavepointTargetPolicy::any().check("x/../y", None).is_err());
    }

    #[test]
    fn relative_roots_are_taken_against_the_working_directory() {
        let policy = SavepointTargetPolicy::with_roots(["sp/./a/../b"]).unwrap();
        let here = std::env::current_dir().unwrap();
        let expected = here.join("sp").join("b");
        assert_eq!(policy.roots(), [expected.display().to_string()]);
        assert!(
            policy
                .check(&format!("{}/x", expected.display()), None)
                .is_ok()
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_out_of_the_root_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "flowstate-targets-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let root = dir.join("root");
        let outside = dir.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let policy = SavepointTargetPolicy::with_roots([root.to_str().unwrap()]).unwrap();
        let escaping = format!("{}/link/sp", root.display());
        let error = policy.check(&escaping, None).unwrap_err();
        assert!(
            matches!(error, SavepointTargetError::Symlink { .. }),
            "{error}"
        );
        assert!(
            policy
                .check(&format!("{}/real/sp", root.display()), None)
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
