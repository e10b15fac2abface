//! Job parameters in snapshots: a job's name and parameters are recorded in
//! every checkpoint's metadata, and a restore into a job with other
//! parameters fails naming every difference, unless the configuration allows
//! the change. Parameters a job marks changeable are recorded, not compared.

use std::time::Duration;

use flowstate::runtime::checkpoint::restore::load_latest_of;
use flowstate::runtime::checkpoint::{CoordinatorSettings, JobSection, open_storage};
use flowstate::runtime::{
    BuildError, CheckpointingConfig, Guarantee, RestartStrategy, RestoreFrom,
};
use flowstate::{
    ExecutionConfig, FnResult, JobError, JobParameters, KeyedContext, KeyedProcessFunction,
    KeyedStateBackend, ParameterDifference, StreamEnvironment, ValueStateDescriptor,
    ValueStateHandle,
};

#[derive(Clone, Default)]
struct Count(Option<ValueStateHandle<u64>>);

impl KeyedProcessFunction<u64, u64, u64> for Count {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.0 = Some(state.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    fn process(&mut self, _: u64, ctx: &mut KeyedContext<'_, u64>, out: &mut Vec<u64>) -> FnResult {
        let handle = self.0.as_ref().ok_or("not open")?;
        let n = ctx.value(handle).get()?.copied().unwrap_or(0) + 1;
        ctx.value(handle).set(n)?;
        out.push(n);
        Ok(())
    }
}

fn config(storage: &str, name: &str, restore: RestoreFrom) -> ExecutionConfig {
    ExecutionConfig {
        job_name: name.into(),
        checkpointing: Some(CheckpointingConfig {
            storage: open_storage(storage).unwrap(),
            settings: CoordinatorSettings {
                // Only the final checkpoint at the end of the input.
                interval: Some(Duration::from_secs(3600)),
                ..CoordinatorSettings::default()
            },
            guarantee: Guarantee::ExactlyOnce,
            job_id: None,
            restore,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            restart: RestartStrategy::None,
            savepoint_dir: None,
        }),
        ..ExecutionConfig::with_parallelism(2)
    }
}

fn parameters(records: u64, rate: u64) -> JobParameters {
    JobParameters::new()
        .with("records", records)
        .and_then(|p| p.with("keys", 3))
        .and_then(|p| p.with_changeable("rate", rate))
        .unwrap()
}

/// Runs the counting job over `records` records; its parameters are set on
/// the environment, as the built-in jobs' builders do.
fn run(config: ExecutionConfig, parameters: Option<JobParameters>) -> Result<(), JobError> {
    let env = StreamEnvironment::new(config);
    if let Some(parameters) = parameters {
        env.set_job_parameters(parameters);
    }
    env.from_collection((0..60u64).collect())
        .uid("numbers")
        .key_by(|n: &u64| n % 3)
        .process(Count::default())
        .uid("count")
        .count();
    env.execute().map(|_| ())
}

fn recorded_job(storage: &str) -> Option<JobSection> {
    let storage = open_storage(storage).unwrap();
    let loaded = load_latest_of(&storage, None).unwrap().unwrap();
    loaded.metadata.job.clone()
}

#[test]
fn every_checkpoint_records_the_job_name_and_parameters() {
    let storage = "memory://job-parameters-recorded";
    run(
        config(storage, "counting", RestoreFrom::Nothing),
        Some(parameters(5_000_000, 10)),
    )
    .unwrap();
    let job = recorded_job(storage).expect("a job section");
    assert_eq!(job.name, "counting");
    assert_eq!(job.parameters, parameters(5_000_000, 10));
}

#[test]
fn a_restore_with_other_parameters_fails_naming_every_difference() {
    let storage = "memory://job-parameters-refused";
    run(
        config(storage, "counting", RestoreFrom::Nothing),
        Some(parameters(5_000_000, 10)),
    )
    .unwrap();
    // Through the configuration this time; `rate` differs too, but is
    // changeable.
    let mut restoring = config(storage, "counting", RestoreFrom::Latest);
    restoring.job_parameters = parameters(2000, 99).with("window", "10s").unwrap();
    let error = run(restoring, None).unwrap_err();
    let JobError::Build(BuildError::ParametersChanged(mismatch)) = &error else {
        panic!("not a parameter mismatch: {error}");
    };
    assert_eq!(
        mismatch.differences,
        [
            ParameterDifference::Changed {
                name: "records".into(),
                recorded: "5000000".into(),
                current: "2000".into(),
            },
            ParameterDifference::Added {
                name: "window".into(),
                current: "10s".into(),
            },
        ]
    );
    let message = error.to_string();
    assert!(
        message.contains(
            "records: 5000000 in the snapshot, 2000 now; window: not in the snapshot, 10s now"
        ),
        "{message}"
    );
    // Another job name is a difference of its own.
    let error = run(
        config(storage, "other", RestoreFrom::Latest),
        Some(parameters(5_000_000, 10)),
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("job name: counting in the snapshot, other now"),
        "{error}"
    );
}

#[test]
fn an_allowed_change_restores_and_records_the_new_parameters() {
    let storage = "memory://job-parameters-allowed";
    run(
        config(storage, "counting", RestoreFrom::Nothing),
        Some(parameters(5_000_000, 10)),
    )
    .unwrap();
    let mut restoring = config(storage, "counting", RestoreFrom::Latest);
    restoring.allow_parameter_change = true;
    run(restoring, Some(parameters(2000, 10))).unwrap();
    assert_eq!(
        recorded_job(storage).unwrap().parameters,
        parameters(2000, 10)
    );
}

#[test]
fn the_same_parameters_restore_whatever_the_changeable_ones_are() {
    let storage = "memory://job-parameters-same";
    run(
        config(storage, "counting", RestoreFrom::Nothing),
        Some(parameters(100, 10)),
    )
    .unwrap();
    run(
        config(storage, "counting", RestoreFrom::Latest),
        Some(parameters(100, 77)),
    )
    .unwrap();
    assert_eq!(
        recorded_job(storage).unwrap().parameters,
        parameters(100, 77)
    );
}

/// `latest` for a given job id (an elected job manager resuming the job it
/// took over) reads that job's checkpoints only. The bug: it read the newest
/// of any job in the storage, so a job that failed over before its first
/// checkpoint was restored from another job's state (here the other job's
/// parameters differ, so that restore fails, which shows it happened).
#[test]
fn latest_of_a_given_job_never_restores_another_jobs_checkpoint() {
    let storage = "memory://job-parameters-latest-of-job";
    run(
        config(storage, "counting", RestoreFrom::Nothing),
        Some(parameters(5_000_000, 10)),
    )
    .unwrap();
    let mut resuming = config(storage, "counting", RestoreFrom::Latest);
    if let Some(c) = resuming.checkpointing.as_mut() {
        c.job_id = Some("resumed-job".into());
    }
    run(resuming.clone(), Some(parameters(2000, 10)))
        .expect("a fresh start: the job has no checkpoint of its own");
    let own = load_latest_of(&open_storage(storage).unwrap(), Some("resumed-job"))
        .unwrap()
        .expect("the resumed job checkpointed");
    assert_eq!(
        own.metadata.job.as_ref().map(|j| j.parameters.clone()),
        Some(parameters(2000, 10))
    );
    // Its own checkpoint is restored the next time.
    let error = run(resuming, Some(parameters(3000, 10))).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("records: 2000 in the snapshot, 3000 now"),
        "{error}"
    );
}
