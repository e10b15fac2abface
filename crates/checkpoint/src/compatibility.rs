//! Would a snapshot restore into a job? The comparison of a savepoint's (or
//! checkpoint's) operators, states and job parameters with what a job
//! declares, before anything runs.
//!
//! Owns: the description of a job under check ([`JobUnderCheck`],
//! [`DeclaredOperator`], [`DeclaredKeyedState`]), the comparison
//! ([`compare`]), reading what a snapshot records ([`recorded_states`],
//! [`check_snapshot`]) and the report ([`CompatibilityReport`], a table by
//! `Display`, JSON by serde). Must not touch: running operators. The runtime
//! learns what a job declares (a dry declaration pass) and hands it here.
//!
//! The decisions are a restore's: an operator of the snapshot the job lacks
//! is *dropped* (refused unless `allow_non_restored_state`); an operator or
//! state only the job has is *new* (starts empty); a state whose kind or type
//! names differ from the declaration is *incompatible* (the restore would
//! fail: `StateError::IncompatibleDeclaration`, `RestoredTypeMismatch`,
//! `TtlMismatch`), so is keyed state under a uid whose operator keeps none, or
//! another key type; another max parallelism fails the whole restore; job
//! parameters as [`crate::job::compare_job`] says. A state the snapshot holds
//! that the operator does not declare when it opens is *undeclared*: a restore
//! carries it over unchanged (restored if the function declares it later), so
//! it does not block.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use flowstate_state::StateKind;
use flowstate_state::descriptor::StateSignature;

use crate::job::{JobParameters, ParameterDifference, compare_job};
use crate::metadata::{CheckpointMetadata, SnapshotKind, read_metadata};
use crate::restore::open_snapshot;
use crate::{CheckpointError, keyed_file};

/// The keyed states an operator instance declares when it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredKeyedState {
    /// The declared name of the key type (`u64`, `string`, ...).
    pub key_type: String,
    pub states: Vec<StateSignature>,
}

/// What an operator is to a compatibility check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorRole {
    /// Operator state only (positions); compared by uid.
    Source,
    /// A one- or two-input operator: keyed state compared state by state.
    Operator,
    /// Operator state only (pending transactions); compared by uid.
    Sink,
}

/// One operator of the job under check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredOperator {
    pub uid: String,
    pub name: String,
    pub role: OperatorRole,
    /// The keyed states it declares when it opens; `None` if it keeps no
    /// keyed state (sources, sinks, stateless operators).
    pub keyed: Option<DeclaredKeyedState>,
}

/// A job as a restore would see it.
#[derive(Debug, Clone)]
pub struct JobUnderCheck {
    pub name: String,
    pub parameters: JobParameters,
    pub max_parallelism: u32,
    pub parallelism: u32,
    pub operators: Vec<DeclaredOperator>,
}

/// The restore options a check assumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CheckOptions {
    pub allow_non_restored_state: bool,
    pub allow_parameter_change: bool,
}

/// What a restore would do with an operator or a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// In the snapshot and in the job, compatible: restored.
    Restored,
    /// Only in the job: starts empty.
    New,
    /// Only in the snapshot: its state is dropped (an operator: refused
    /// unless `allow_non_restored_state`).
    Dropped,
    /// In both, but the restore would fail.
    Incompatible,
    /// A state in the snapshot that the operator does not declare when it
    /// opens: carried over unchanged (restored if declared later).
    Undeclared,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Restored => "restored",
            Outcome::New => "new",
            Outcome::Dropped => "dropped",
            Outcome::Incompatible => "INCOMPATIBLE",
            Outcome::Undeclared => "undeclared",
        })
    }
}

/// A state's kind and type names, as recorded or declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateShape {
    pub kind: StateKind,
    pub types: String,
}

impl fmt::Display for StateShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.types)
    }
}

/// One keyed state of one operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateCheck {
    pub name: String,
    pub outcome: Outcome,
    pub snapshot: Option<StateShape>,
    pub job: Option<StateShape>,
    /// Why it is incompatible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One operator (by uid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorCheck {
    pub uid: String,
    /// The job's name for it, else the snapshot's.
    pub name: String,
    /// `None` for an operator only the snapshot has.
    pub role: Option<OperatorRole>,
    pub outcome: Outcome,
    /// Why it is incompatible (the operator itself, not one state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub states: Vec<StateCheck>,
}

/// The job name and parameters, compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParameterCheck {
    /// The snapshot records a job name and parameters (older ones do not:
    /// nothing is compared).
    pub recorded: bool,
    pub recorded_job: Option<String>,
    pub differences: Vec<ParameterDifference>,
}

/// Whether a snapshot would restore into a job, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompatibilityReport {
    /// The snapshot's metadata path in its storage.
    pub snapshot: String,
    pub kind: SnapshotKind,
    pub checkpoint_id: u64,
    pub snapshot_max_parallelism: u32,
    pub job_max_parallelism: u32,
    pub operators: Vec<OperatorCheck>,
    pub parameters: ParameterCheck,
    pub options: CheckOptions,
    /// The restore would succeed with `options`.
    pub restorable: bool,
    /// Every reason it would not (empty when it would).
    pub problems: Vec<String>,
}

impl CompatibilityReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

/// The keyed states a snapshot records, per operator uid: the union over its
/// instances (canonical keyed files: one section each; native handles: the
/// metadata's list).
pub fn recorded_states(
    storage: &dyn crate::storage::CheckpointStorage,
    metadata: &CheckpointMetadata,
) -> Result<BTreeMap<String, Vec<StateSignature>>, CheckpointError> {
    let mut out: BTreeMap<String, Vec<StateSignature>> = BTreeMap::new();
    for operator in &metadata.operators {
        let states = out.entry(operator.uid.clone()).or_default();
        let mut add = |s: StateSignature| {
            if !states
                .iter()
                .any(|t| t.name == s.name && t.kind == s.kind && t.types == s.types)
            {
                states.push(s);
            }
        };
        for subtask in &operator.subtasks {
            if let Some(keyed) = &subtask.keyed {
                keyed_file::recorded_states(storage, keyed)?
                    .into_iter()
                    .for_each(&mut add);
            }
            if let Some(native) = &subtask.native {
                native.states.iter().cloned().for_each(&mut add);
            }
        }
    }
    Ok(out)
}

/// Reads the snapshot at `location` (its metadata and one section of each
/// keyed file) and compares it with `job`.
pub fn check_snapshot(
    location: &str,
    job: &JobUnderCheck,
    options: CheckOptions,
) -> Result<CompatibilityReport, CheckpointError> {
    let opened = open_snapshot(location)?;
    let metadata = read_metadata(opened.storage.as_ref(), &opened.metadata_path)?;
    let recorded = recorded_states(opened.storage.as_ref(), &metadata)?;
    Ok(compare(
        &opened.metadata_path,
        &metadata,
        &recorded,
        job,
        options,
    ))
}

/// The declared name of the key type a snapshot records for `uid` (empty if
/// unknown).
fn recorded_key_type<'m>(metadata: &'m CheckpointMetadata, uid: &str) -> &'m str {
    metadata
        .operator(uid)
        .into_iter()
        .flat_map(|o| &o.subtasks)
        .filter_map(|s| s.keyed.as_ref())
        .map(|k| k.key_type.as_str())
        .find(|k| !k.is_empty())
        .unwrap_or("")
}

/// Timer states are declared by the keyed operator itself when it opens on a
/// snapshot holding them (`list<i64>` values): a dry pass with nothing
/// restored does not see them.
fn engine_declared(name: &str) -> Option<StateSignature> {
    name.starts_with("_timers/").then(|| StateSignature {
        name: name.to_owned(),
        kind: StateKind::Value,
        types: "list<i64>".to_owned(),
        rust_types: std::any::type_name::<Vec<i64>>(),
    })
}

fn shape(s: &StateSignature) -> StateShape {
    StateShape {
        kind: s.kind,
        types: s.types.clone(),
    }
}

fn compare_states(recorded: &[StateSignature], declared: &[StateSignature]) -> Vec<StateCheck> {
    let mut checks = Vec::new();
    for d in declared {
        let check = match recorded.iter().find(|r| r.name == d.name) {
            None => StateCheck {
                name: d.name.clone(),
                outcome: Outcome::New,
                snapshot: None,
                job: Some(shape(d)),
                reason: None,
            },
            Some(r) => {
                let verdict = flowstate_state::backend::check_restored(d, r.kind, &r.types).err();
                StateCheck {
                    name: d.name.clone(),
                    outcome: if verdict.is_some() {
                        Outcome::Incompatible
                    } else {
                        Outcome::Restored
                    },
                    snapshot: Some(shape(r)),
                    job: Some(shape(d)),
                    reason: verdict.map(|e| e.to_string()),
                }
            }
        };
        checks.push(check);
    }
    for r in recorded {
        if declared.iter().any(|d| d.name == r.name) {
            continue;
        }
        let check = match engine_declared(&r.name) {
            Some(d) => {
                let verdict = flowstate_state::backend::check_restored(&d, r.kind, &r.types).err();
                StateCheck {
                    name: r.name.clone(),
                    outcome: if verdict.is_some() {
                        Outcome::Incompatible
                    } else {
                        Outcome::Restored
                    },
                    snapshot: Some(shape(r)),
                    job: Some(shape(&d)),
                    reason: verdict.map(|e| e.to_string()),
                }
            }
            None => StateCheck {
                name: r.name.clone(),
                outcome: Outcome::Undeclared,
                snapshot: Some(shape(r)),
                job: None,
                reason: None,
            },
        };
        checks.push(check);
    }
    checks
}

/// Compares a snapshot (`metadata` read from `snapshot`, with the states
/// `recorded` per uid) with `job` under `options`.
pub fn compare(
    snapshot: &str,
    metadata: &CheckpointMetadata,
    recorded: &BTreeMap<String, Vec<StateSignature>>,
    job: &JobUnderCheck,
    options: CheckOptions,
) -> CompatibilityReport {
    let none = Vec::new();
    let mut operators = Vec::new();
    for declared in &job.operators {
        if metadata.operator(&declared.uid).is_none() {
            operators.push(OperatorCheck {
                uid: declared.uid.clone(),
                name: declared.name.clone(),
                role: Some(declared.role),
                outcome: Outcome::New,
                reason: None,
                states: compare_states(&[], declared.keyed.as_ref().map_or(&none, |k| &k.states)),
            });
            continue;
        }
        let states_in_snapshot = recorded.get(&declared.uid).unwrap_or(&none);
        let mut reason = None;
        let states = match &declared.keyed {
            Some(keyed) => {
                let recorded_key = recorded_key_type(metadata, &declared.uid);
                if !recorded_key.is_empty()
                    && !recorded_key.starts_with(flowstate_state::state_type::LEGACY_PREFIX)
                    && recorded_key != keyed.key_type
                {
                    reason = Some(format!(
                        "keyed by {recorded_key} in the snapshot, by {} now",
                        keyed.key_type
                    ));
                }
                compare_states(states_in_snapshot, &keyed.states)
            }
            None if !states_in_snapshot.is_empty() => {
                reason = Some(format!(
                    "the snapshot holds keyed state of it ({}), the job's operator keeps none",
                    states_in_snapshot
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                compare_states(states_in_snapshot, &[])
            }
            None => Vec::new(),
        };
        let incompatible =
            reason.is_some() || states.iter().any(|s| s.outcome == Outcome::Incompatible);
        operators.push(OperatorCheck {
            uid: declared.uid.clone(),
            name: declared.name.clone(),
            role: Some(declared.role),
            outcome: if incompatible {
                Outcome::Incompatible
            } else {
                Outcome::Restored
            },
            reason,
            states,
        });
    }
    for snap in &metadata.operators {
        if job.operators.iter().any(|o| o.uid == snap.uid) {
            continue;
        }
        let states = recorded
            .get(&snap.uid)
            .unwrap_or(&none)
            .iter()
            .map(|r| StateCheck {
                name: r.name.clone(),
                outcome: Outcome::Dropped,
                snapshot: Some(shape(r)),
                job: None,
                reason: None,
            })
            .collect();
        operators.push(OperatorCheck {
            uid: snap.uid.clone(),
            name: snap.name.clone(),
            role: None,
            outcome: Outcome::Dropped,
            reason: None,
            states,
        });
    }

    let differences = metadata
        .job
        .as_ref()
        .map(|recorded| compare_job(recorded, &job.name, &job.parameters))
        .unwrap_or_default();
    let parameters = ParameterCheck {
        recorded: metadata.job.is_some(),
        recorded_job: metadata.job.as_ref().map(|j| j.name.clone()),
        differences,
    };

    let mut problems = Vec::new();
    if metadata.max_parallelism != job.max_parallelism {
        problems.push(format!(
            "max parallelism {} in the snapshot, {} now (key groups cannot change)",
            metadata.max_parallelism, job.max_parallelism
        ));
    }
    for o in &operators {
        match o.outcome {
            Outcome::Dropped if !options.allow_non_restored_state => problems.push(format!(
                "operator '{}' ({}) is in the snapshot, not in the job: the restore fails unless dropping its state is allowed",
                o.uid, o.name
            )),
            Outcome::Incompatible => {
                let mut why: Vec<String> = o.reason.iter().cloned().collect();
                why.extend(o.states.iter().filter_map(|s| s.reason.clone()));
                problems.push(format!("operator '{}': {}", o.uid, why.join("; ")));
            }
            _ => {}
        }
    }
    if !parameters.differences.is_empty() && !options.allow_parameter_change {
        problems.push(format!(
            "other job parameters: {} (unless a parameter change is allowed)",
            parameters
                .differences
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    CompatibilityReport {
        snapshot: snapshot.to_owned(),
        kind: metadata.kind,
        checkpoint_id: metadata.checkpoint_id,
        snapshot_max_parallelism: metadata.max_parallelism,
        job_max_parallelism: job.max_parallelism,
        operators,
        parameters,
        options,
        restorable: problems.is_empty(),
        problems,
    }
}

/// `text` (names read from a snapshot) safe to print on a terminal: control
/// characters escaped, everything else (quotes included) as it is.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

impl fmt::Display for CompatibilityReport {
    /// A table: one row per operator, then one per state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SnapshotKind::Checkpoint => "checkpoint",
            SnapshotKind::Savepoint => "savepoint",
        };
        writeln!(f, "{kind} {} ({})", self.checkpoint_id, self.snapshot)?;
        writeln!(
            f,
            "max parallelism: {} in the snapshot, {} now",
            self.snapshot_max_parallelism, self.job_max_parallelism
        )?;
        writeln!(f)?;
        let mut rows: Vec<[String; 5]> = vec![[
            "OPERATOR".into(),
            "STATE".into(),
            "OUTCOME".into(),
            "SNAPSHOT".into(),
            "JOB".into(),
        ]];
        for o in &self.operators {
            let role = match o.role {
                Some(OperatorRole::Source) => "(source)",
                Some(OperatorRole::Sink) => "(sink)",
                Some(OperatorRole::Operator) | None => "(operator)",
            };
            rows.push([
                o.uid.clone(),
                role.into(),
                o.outcome.to_string(),
                String::new(),
                o.reason.clone().unwrap_or_default(),
            ]);
            for s in &o.states {
                let show =
                    |s: &Option<StateShape>| s.as_ref().map_or("-".into(), |s| s.to_string());
                rows.push([
                    String::new(),
                    s.name.clone(),
                    s.outcome.to_string(),
                    show(&s.snapshot),
                    show(&s.job),
                ]);
            }
        }
        let mut widths = [0usize; 5];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            writeln!(f, "{}", printable(line.trim_end()))?;
        }
        writeln!(f)?;
        if !self.parameters.recorded {
            writeln!(
                f,
                "job parameters: not recorded in the snapshot (not compared)"
            )?;
        } else if self.parameters.differences.is_empty() {
            writeln!(
                f,
                "job parameters: the same ({})",
                self.parameters
                    .recorded_job
                    .as_deref()
                    .map(printable)
                    .unwrap_or_default()
            )?;
        } else {
            writeln!(f, "job parameters: differ")?;
            for d in &self.parameters.differences {
                writeln!(f, "  {}", printable(&d.to_string()))?;
            }
        }
        writeln!(f)?;
        if self.restorable {
            writeln!(f, "the restore would succeed")
        } else {
            writeln!(f, "the restore would fail:")?;
            for p in &self.problems {
                writeln!(f, "  {}", printable(p))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSection;
    use crate::metadata::{
        FileRef, KeyGroupEntry, KeyedStateHandle, OperatorSnapshot, SubtaskSnapshot,
    };

    fn sig(name: &str, kind: StateKind, types: &str) -> StateSignature {
        StateSignature {
            name: name.into(),
            kind,
            types: types.into(),
            rust_types: "",
        }
    }

    fn keyed_operator(uid: &str, key_type: &str) -> OperatorSnapshot {
        OperatorSnapshot {
            uid: uid.into(),
            name: uid.to_uppercase(),
            parallelism: 1,
            subtasks: vec![SubtaskSnapshot {
                subtask: 0,
                keyed: Some(KeyedStateHandle {
                    file: FileRef {
                        path: format!("{uid}-0.keyed"),
                        size: 20,
                        crc32c: 0,
                    },
                    key_group_start: 0,
                    key_group_end: 4,
                    groups: (0..4)
                        .map(|g| KeyGroupEntry {
                            key_group: g,
                            offset: 8 + u64::from(g) * 2,
                            length: 2,
                            entries: 0,
                        })
                        .collect(),
                    key_type: key_type.into(),
                }),
                native: None,
                lists: Vec::new(),
                channels: None,
            }],
        }
    }

    fn source(uid: &str) -> OperatorSnapshot {
        OperatorSnapshot {
            uid: uid.into(),
            name: uid.into(),
            parallelism: 1,
            subtasks: Vec::new(),
        }
    }

    fn metadata(operators: Vec<OperatorSnapshot>) -> CheckpointMetadata {
        CheckpointMetadata {
            job_id: "job-1".into(),
            checkpoint_id: 3,
            kind: SnapshotKind::Savepoint,
            created_unix_ms: 1,
            max_parallelism: 4,
            operators,
            job: Some(JobSection::new(
                "keyed-count",
                JobParameters::new().with("records", 10).unwrap(),
            )),
        }
    }

    fn declared(
        uid: &str,
        role: OperatorRole,
        states: Option<Vec<StateSignature>>,
    ) -> DeclaredOperator {
        DeclaredOperator {
            uid: uid.into(),
            name: uid.into(),
            role,
            keyed: states.map(|states| DeclaredKeyedState {
                key_type: "u64".into(),
                states,
            }),
        }
    }

    fn job(operators: Vec<DeclaredOperator>) -> JobUnderCheck {
        JobUnderCheck {
            name: "keyed-count".into(),
            parameters: JobParameters::new().with("records", 10).unwrap(),
            max_parallelism: 4,
            parallelism: 2,
            operators,
        }
    }

    fn check(
        metadata: &CheckpointMetadata,
        recorded: &[(&str, Vec<StateSignature>)],
        job: &JobUnderCheck,
        options: CheckOptions,
    ) -> CompatibilityReport {
        let recorded = recorded
            .iter()
            .map(|(uid, states)| ((*uid).to_owned(), states.clone()))
            .collect();
        compare("sp/_metadata", metadata, &recorded, job, options)
    }

    fn state<'r>(report: &'r CompatibilityReport, uid: &str, name: &str) -> &'r StateCheck {
        report
            .operators
            .iter()
            .find(|o| o.uid == uid)
            .and_then(|o| o.states.iter().find(|s| s.name == name))
            .unwrap_or_else(|| panic!("no state {uid}/{name} in {report:#?}"))
    }

    fn outcome(report: &CompatibilityReport, uid: &str) -> Outcome {
        report
            .operators
            .iter()
            .find(|o| o.uid == uid)
            .unwrap()
            .outcome
    }

    #[test]
    fn the_same_job_restores_everything() {
        let m = metadata(vec![source("gen"), keyed_operator("count", "u64")]);
        let j = job(vec![
            declared("gen", OperatorRole::Source, None),
            declared(
                "count",
                OperatorRole::Operator,
                Some(vec![sig("c", StateKind::Value, "u64")]),
            ),
            declared("out", OperatorRole::Sink, None),
        ]);
        let r = check(
            &m,
            &[("count", vec![sig("c", StateKind::Value, "u64")])],
            &j,
            CheckOptions::default(),
        );
        assert!(r.restorable, "{r}");
        assert_eq!(outcome(&r, "gen"), Outcome::Restored);
        assert_eq!(outcome(&r, "count"), Outcome::Restored);
        assert_eq!(state(&r, "count", "c").outcome, Outcome::Restored);
        // A sink without state in the snapshot is new, which is harmless.
        assert_eq!(outcome(&r, "out"), Outcome::New);
        assert!(r.parameters.recorded && r.parameters.differences.is_empty());
        let table = r.to_string();
        assert!(table.contains("the restore would succeed"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert_eq!(json["restorable"], true);
        assert_eq!(json["operators"][1]["states"][0]["outcome"], "restored");
    }

    #[test]
    fn new_states_and_operators_start_empty() {
        let m = metadata(vec![keyed_operator("count", "u64")]);
        let j = job(vec![
            declared(
                "count",
                OperatorRole::Operator,
                Some(vec![
                    sig("c", StateKind::Value, "u64"),
                    sig("extra", StateKind::List, "string"),
                ]),
            ),
            declared(
                "more",
                OperatorRole::Operator,
                Some(vec![sig("m", StateKind::Value, "u64")]),
            ),
        ]);
        let r = check(
            &m,
            &[("count", vec![sig("c", StateKind::Value, "u64")])],
            &j,
            CheckOptions::default(),
        );
        assert!(r.restorable, "{r}");
        assert_eq!(state(&r, "count", "extra").outcome, Outcome::New);
        assert_eq!(outcome(&r, "more"), Outcome::New);
        assert_eq!(state(&r, "more", "m").outcome, Outcome::New);
    }

    #[test]
    fn a_dropped_operator_blocks_unless_allowed() {
        let m = metadata(vec![
            keyed_operator("count", "u64"),
            keyed_operator("gone", "u64"),
        ]);
        let recorded = [
            ("count", vec![sig("c", StateKind::Value, "u64")]),
            ("gone", vec![sig("g", StateKind::Value, "u64")]),
        ];
        let j = job(vec![declared(
            "count",
            OperatorRole::Operator,
            Some(vec![sig("c", StateKind::Value, "u64")]),
        )]);
        let r = check(&m, &recorded, &j, CheckOptions::default());
        assert!(!r.restorable);
        assert_eq!(outcome(&r, "gone"), Outcome::Dropped);
        assert_eq!(state(&r, "gone", "g").outcome, Outcome::Dropped);
        assert!(
            r.problems[0].contains("operator 'gone'"),
            "{:?}",
            r.problems
        );
        let allowed = CheckOptions {
            allow_non_restored_state: true,
            ..CheckOptions::default()
        };
        assert!(check(&m, &recorded, &j, allowed).restorable);
    }

    #[test]
    fn each_incompatibility_is_named() {
        let m = metadata(vec![
            keyed_operator("kind", "u64"),
            keyed_operator("types", "u64"),
            keyed_operator("ttl", "u64"),
            keyed_operator("key", "string"),
            keyed_operator("unkeyed", "u64"),
        ]);
        let recorded = [
            ("kind", vec![sig("s", StateKind::Value, "u64")]),
            ("types", vec![sig("s", StateKind::Value, "u64")]),
            ("ttl", vec![sig("s", StateKind::Value, "ttl<u64>")]),
            ("key", vec![sig("s", StateKind::Value, "u64")]),
            ("unkeyed", vec![sig("s", StateKind::Value, "u64")]),
        ];
        let j = job(vec![
            declared(
                "kind",
                OperatorRole::Operator,
                Some(vec![sig("s", StateKind::List, "u64")]),
            ),
            declared(
                "types",
                OperatorRole::Operator,
                Some(vec![sig("s", StateKind::Value, "string")]),
            ),
            declared(
                "ttl",
                OperatorRole::Operator,
                Some(vec![sig("s", StateKind::Value, "u64")]),
            ),
            declared(
                "key",
                OperatorRole::Operator,
                Some(vec![sig("s", StateKind::Value, "u64")]),
            ),
            declared("unkeyed", OperatorRole::Operator, None),
        ]);
        let r = check(&m, &recorded, &j, CheckOptions::default());
        assert!(!r.restorable);
        for uid in ["kind", "types", "ttl", "key", "unkeyed"] {
            assert_eq!(outcome(&r, uid), Outcome::Incompatible, "{uid}: {r}");
        }
        let reason = |uid: &str| state(&r, uid, "s").reason.clone().unwrap_or_default();
        assert!(reason("kind").contains("list state"), "{}", reason("kind"));
        assert!(reason("types").contains("string"), "{}", reason("types"));
        assert!(reason("ttl").contains("TTL"), "{}", reason("ttl"));
        let key = r.operators.iter().find(|o| o.uid == "key").unwrap();
        assert_eq!(
            key.reason.as_deref(),
            Some("keyed by string in the snapshot, by u64 now")
        );
        let unkeyed = r.operators.iter().find(|o| o.uid == "unkeyed").unwrap();
        assert!(unkeyed.reason.as_deref().unwrap().contains("keeps none"));
        assert_eq!(r.problems.len(), 5, "{:?}", r.problems);

        // Another max parallelism fails the whole restore.
        let mut other = job(Vec::new());
        other.max_parallelism = 8;
        let r = check(&metadata(Vec::new()), &[], &other, CheckOptions::default());
        assert!(!r.restorable);
        assert!(r.problems[0].contains("max parallelism 4 in the snapshot, 8 now"));
    }

    #[test]
    fn timers_restore_and_undeclared_states_are_carried() {
        let m = metadata(vec![keyed_operator("w", "u64")]);
        let recorded = [(
            "w",
            vec![
                sig("_timers/event", StateKind::Value, "list<i64>"),
                sig("lazy", StateKind::Value, "u64"),
            ],
        )];
        let j = job(vec![declared(
            "w",
            OperatorRole::Operator,
            Some(Vec::new()),
        )]);
        let r = check(&m, &recorded, &j, CheckOptions::default());
        assert!(r.restorable, "{r}");
        assert_eq!(state(&r, "w", "_timers/event").outcome, Outcome::Restored);
        assert_eq!(state(&r, "w", "lazy").outcome, Outcome::Undeclared);
    }

    #[test]
    fn parameters_are_compared_unless_allowed_or_not_recorded() {
        let mut j = job(Vec::new());
        j.parameters = JobParameters::new().with("records", 2000).unwrap();
        let r = check(&metadata(Vec::new()), &[], &j, CheckOptions::default());
        assert!(!r.restorable);
        assert_eq!(
            r.parameters.differences[0].to_string(),
            "records: 10 in the snapshot, 2000 now"
        );
        assert!(
            r.to_string()
                .contains("records: 10 in the snapshot, 2000 now")
        );
        let allowed = CheckOptions {
            allow_parameter_change: true,
            ..CheckOptions::default()
        };
        assert!(check(&metadata(Vec::new()), &[], &j, allowed).restorable);
        let mut old = metadata(Vec::new());
        old.job = None;
        let r = check(&old, &[], &j, CheckOptions::default());
        assert!(r.restorable && !r.parameters.recorded);
        assert!(r.to_string().contains("not recorded in the snapshot"));
    }
}
