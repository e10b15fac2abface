//! The job a snapshot was taken of: its name and parameters, recorded in
//! `_metadata` (the optional `job` section, `docs/savepoint-format.md` 3.2)
//! and compared with the restoring job's.
//!
//! Owns: [`JobParameters`] (ordered name → string value, with limits),
//! [`JobSection`] (what `_metadata` records), the comparison
//! ([`compare_job`], [`ParameterDifference`]) and the refusal a restore
//! returns ([`ParameterMismatch`]). Must not touch: storage, the runtime, any
//! command line: errors name parameters, never flags.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version of the `job` section this build writes and the newest it reads.
pub const JOB_SECTION_VERSION: u32 = 1;
/// Most parameters one job may record.
pub const PARAMETERS_MAX: usize = 128;
/// Longest parameter name, in bytes.
pub const PARAMETER_NAME_BYTES_MAX: usize = 64;
/// Longest parameter value, in bytes (UTF-8).
pub const PARAMETER_VALUE_BYTES_MAX: usize = 4096;
/// Longest job name, in bytes (UTF-8).
pub const JOB_NAME_BYTES_MAX: usize = 256;

/// A parameter or job name that cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParameterError {
    #[error("more than {PARAMETERS_MAX} job parameters")]
    TooMany,
    #[error(
        "job parameter name '{name}' is not 1 to {PARAMETER_NAME_BYTES_MAX} ASCII letters, digits, '-', '_' or '.'"
    )]
    BadName { name: String },
    #[error("job parameter '{name}' is given twice")]
    Duplicate { name: String },
    #[error(
        "the value of job parameter '{name}' has {bytes} bytes, more than the limit of {PARAMETER_VALUE_BYTES_MAX}"
    )]
    ValueTooLong { name: String, bytes: usize },
    #[error("the job name has {bytes} bytes, more than the limit of {JOB_NAME_BYTES_MAX}")]
    JobNameTooLong { bytes: usize },
}

/// One job parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobParameter {
    pub name: String,
    pub value: String,
    /// The job allows the value to change across a restore (a throttle, an
    /// output directory): recorded, never compared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changeable: bool,
}

/// A job's parameters, in the order the job gives them: names are unique,
/// values strings. Recorded in every snapshot; a restore compares them
/// (except the changeable ones) with the restoring job's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobParameters {
    entries: Vec<JobParameter>,
}

fn check_name(name: &str) -> Result<(), ParameterError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > PARAMETER_NAME_BYTES_MAX || !name.bytes().all(plain) {
        return Err(ParameterError::BadName {
            name: name.chars().take(PARAMETER_NAME_BYTES_MAX).collect(),
        });
    }
    Ok(())
}

/// Checks a job name against [`JOB_NAME_BYTES_MAX`].
pub fn check_job_name(name: &str) -> Result<(), ParameterError> {
    if name.len() > JOB_NAME_BYTES_MAX {
        return Err(ParameterError::JobNameTooLong { bytes: name.len() });
    }
    Ok(())
}

impl JobParameters {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds parameter `name` (compared on restore).
    pub fn with(mut self, name: &str, value: impl fmt::Display) -> Result<Self, ParameterError> {
        self.insert(name, value, false)?;
        Ok(self)
    }

    /// Adds parameter `name`, which may change across a restore (recorded,
    /// not compared).
    pub fn with_changeable(
        mut self,
        name: &str,
        value: impl fmt::Display,
    ) -> Result<Self, ParameterError> {
        self.insert(name, value, true)?;
        Ok(self)
    }

    /// Adds parameter `name` at the end, refusing a second one of that name
    /// and anything over the limits.
    pub fn insert(
        &mut self,
        name: &str,
        value: impl fmt::Display,
        changeable: bool,
    ) -> Result<(), ParameterError> {
        check_name(name)?;
        if self.get(name).is_some() {
            return Err(ParameterError::Duplicate {
                name: name.to_owned(),
            });
        }
        if self.entries.len() >= PARAMETERS_MAX {
            return Err(ParameterError::TooMany);
        }
        let value = value.to_string();
        if value.len() > PARAMETER_VALUE_BYTES_MAX {
            return Err(ParameterError::ValueTooLong {
                name: name.to_owned(),
                bytes: value.len(),
            });
        }
        self.entries.push(JobParameter {
            name: name.to_owned(),
            value,
            changeable,
        });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&JobParameter> {
        self.entries.iter().find(|p| p.name == name)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, JobParameter> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks what [`insert`](Self::insert) checks, for parameters read from
    /// a snapshot.
    pub fn validate(&self) -> Result<(), ParameterError> {
        if self.entries.len() > PARAMETERS_MAX {
            return Err(ParameterError::TooMany);
        }
        for (i, p) in self.entries.iter().enumerate() {
            check_name(&p.name)?;
            if self.entries[..i].iter().any(|q| q.name == p.name) {
                return Err(ParameterError::Duplicate {
                    name: p.name.clone(),
                });
            }
            if p.value.len() > PARAMETER_VALUE_BYTES_MAX {
                return Err(ParameterError::ValueTooLong {
                    name: p.name.clone(),
                    bytes: p.value.len(),
                });
            }
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a JobParameters {
    type Item = &'a JobParameter;
    type IntoIter = std::slice::Iter<'a, JobParameter>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// The `job` section of `_metadata`: which job, with which parameters, wrote
/// the snapshot. Absent in snapshots written before it existed ("no
/// parameters recorded").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSection {
    /// [`JOB_SECTION_VERSION`]; a reader refuses a section of a version it
    /// does not know.
    pub version: u32,
    pub name: String,
    pub parameters: JobParameters,
}

impl JobSection {
    /// The section this build writes.
    pub fn new(name: &str, parameters: JobParameters) -> Self {
        Self {
            version: JOB_SECTION_VERSION,
            name: name.to_owned(),
            parameters,
        }
    }

    /// Checks the limits of a section read from a snapshot (the version is
    /// checked by [`crate::validate::check_metadata`]).
    pub fn validate(&self) -> Result<(), ParameterError> {
        check_job_name(&self.name)?;
        self.parameters.validate()
    }
}

/// One way the restoring job differs from the job a snapshot recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ParameterDifference {
    /// Another job name.
    JobName { recorded: String, current: String },
    /// The parameter has another value.
    Changed {
        name: String,
        recorded: String,
        current: String,
    },
    /// The job has a parameter the snapshot does not record.
    Added { name: String, current: String },
    /// The snapshot records a parameter the job no longer has.
    Removed { name: String, recorded: String },
}

impl fmt::Display for ParameterDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JobName { recorded, current } => {
                write!(f, "job name: {recorded} in the snapshot, {current} now")
            }
            Self::Changed {
                name,
                recorded,
                current,
            } => write!(f, "{name}: {recorded} in the snapshot, {current} now"),
            Self::Added { name, current } => {
                write!(f, "{name}: not in the snapshot, {current} now")
            }
            Self::Removed { name, recorded } => {
                write!(f, "{name}: {recorded} in the snapshot, not set now")
            }
        }
    }
}

/// Every difference between the recorded job and the restoring one, in the
/// order: job name, then the recorded parameters in their order (changed,
/// removed), then the parameters only the job has. A parameter either side
/// marks changeable is not compared.
pub fn compare_job(
    recorded: &JobSection,
    job_name: &str,
    parameters: &JobParameters,
) -> Vec<ParameterDifference> {
    let mut differences = Vec::new();
    if recorded.name != job_name {
        differences.push(ParameterDifference::JobName {
            recorded: recorded.name.clone(),
            current: job_name.to_owned(),
        });
    }
    for old in &recorded.parameters {
        let now = parameters.get(&old.name);
        if old.changeable || now.is_some_and(|p| p.changeable) {
            continue;
        }
        match now {
            Some(now) if now.value != old.value => differences.push(ParameterDifference::Changed {
                name: old.name.clone(),
                recorded: old.value.clone(),
                current: now.value.clone(),
            }),
            Some(_) => {}
            None => differences.push(ParameterDifference::Removed {
                name: old.name.clone(),
                recorded: old.value.clone(),
            }),
        }
    }
    for now in parameters {
        if !now.changeable && recorded.parameters.get(&now.name).is_none() {
            differences.push(ParameterDifference::Added {
                name: now.name.clone(),
                current: now.value.clone(),
            });
        }
    }
    differences
}

/// A restore refused because the job is not the one the snapshot recorded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{snapshot} was taken with other job parameters: {}; restore it only if the change is intended",
    list(.differences)
)]
pub struct ParameterMismatch {
    /// The snapshot's metadata path.
    pub snapshot: String,
    pub differences: Vec<ParameterDifference>,
}

fn list(differences: &[ParameterDifference]) -> String {
    differences
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> JobSection {
        JobSection::new(
            "keyed-count",
            JobParameters::new()
                .with("records", 5_000_000)
                .and_then(|p| p.with("keys", 7))
                .and_then(|p| p.with_changeable("rate", 100))
                .unwrap(),
        )
    }

    #[test]
    fn the_same_job_has_no_differences() {
        let r = recorded();
        assert!(compare_job(&r, "keyed-count", &r.parameters).is_empty());
    }

    #[test]
    fn every_difference_is_named_in_order() {
        let now = JobParameters::new()
            .with("records", 2000)
            .and_then(|p| p.with("window", "10s"))
            .unwrap();
        let differences = compare_job(&recorded(), "window-count", &now);
        let text: Vec<String> = differences.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "job name: keyed-count in the snapshot, window-count now",
                "records: 5000000 in the snapshot, 2000 now",
                "keys: 7 in the snapshot, not set now",
                "window: not in the snapshot, 10s now",
            ]
        );
        let error = ParameterMismatch {
            snapshot: "sp/_metadata".into(),
            differences,
        };
        assert!(
            error
                .to_string()
                .starts_with("sp/_metadata was taken with other job parameters: job name: ")
        );
    }

    #[test]
    fn changeable_parameters_are_not_compared() {
        let now = JobParameters::new()
            .with("records", 5_000_000)
            .and_then(|p| p.with("keys", 7))
            .and_then(|p| p.with_changeable("output", "/tmp/x"))
            .unwrap();
        // `rate` removed (changeable in the snapshot), `output` added
        // (changeable now): neither counts.
        assert!(compare_job(&recorded(), "keyed-count", &now).is_empty());
    }

    #[test]
    fn limits_are_enforced_when_adding_and_when_reading() {
        let p = JobParameters::new();
        assert!(matches!(
            p.clone().with("", 1),
            Err(ParameterError::BadName { .. })
        ));
        assert!(matches!(
            p.clone().with("a b", 1),
            Err(ParameterError::BadName { .. })
        ));
        assert!(matches!(
            p.clone().with(&"n".repeat(PARAMETER_NAME_BYTES_MAX + 1), 1),
            Err(ParameterError::BadName { .. })
        ));
        assert!(matches!(
            p.clone()
                .with("v", "x".repeat(PARAMETER_VALUE_BYTES_MAX + 1)),
            Err(ParameterError::ValueTooLong { .. })
        ));
        assert!(matches!(
            p.clone().with("a", 1).and_then(|p| p.with("a", 2)),
            Err(ParameterError::Duplicate { .. })
        ));
        let mut many = JobParameters::new();
        for i in 0..PARAMETERS_MAX {
            many.insert(&format!("p{i}"), i, false).unwrap();
        }
        assert_eq!(
            many.insert("one-more", 0, false),
            Err(ParameterError::TooMany)
        );
        // Read from a snapshot: the same checks.
        let read: JobParameters = serde_json::from_str(
            r#"[{"name":"a","value":"1"},{"name":"a","value":"2","changeable":true}]"#,
        )
        .unwrap();
        assert!(matches!(
            read.validate(),
            Err(ParameterError::Duplicate { .. })
        ));
        let section = JobSection::new(&"j".repeat(JOB_NAME_BYTES_MAX + 1), JobParameters::new());
        assert!(matches!(
            section.validate(),
            Err(ParameterError::JobNameTooLong { .. })
        ));
    }

    #[test]
    fn the_section_is_the_documented_json() {
        let json = serde_json::to_string(&recorded()).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"name":"keyed-count","parameters":[{"name":"records","value":"5000000"},{"name":"keys","value":"7"},{"name":"rate","value":"100","changeable":true}]}"#
        );
        let back: JobSection = serde_json::from_str(&json).unwrap();
        assert_eq!(back, recorded());
    }
}
