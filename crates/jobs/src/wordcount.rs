//! `wordcount`: lower-cased words split on non-alphanumeric characters, with a
//! running count per word emitted as `word,count`.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flowstate::connectors::ConnectorError;

use crate::totals::{InstanceShares, Share};
use flowstate::{
    FnResult, JobParameters, KeyedContext, KeyedProcessFunction, KeyedStateBackend, ParameterError,
    StreamEnvironment, ValueStateDescriptor, ValueStateHandle,
};

/// Parameters of `wordcount`.
#[derive(Debug, Clone)]
pub struct WordcountParams {
    pub input: PathBuf,
    pub output: Option<PathBuf>,
}

impl WordcountParams {
    /// The parameters every snapshot of the job records, named like the
    /// CLI's flags. Compared on restore: `input` (canonical if it exists:
    /// the source's positions are per file of it). Changeable: `output`.
    pub fn job_parameters(&self) -> Result<JobParameters, ParameterError> {
        let input = std::fs::canonicalize(&self.input).unwrap_or_else(|_| self.input.clone());
        let mut p = JobParameters::new().with("input", input.display())?;
        if let Some(output) = &self.output {
            p.insert("output", output.display(), true)?;
        }
        Ok(p)
    }
}

/// The words of a line: split on every non-alphanumeric character, lower-cased.
pub fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// The running count of one word, written as `word,count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordCount {
    pub word: String,
    pub count: u64,
}

impl fmt::Display for WordCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.word, self.count)
    }
}

impl Share for WordTotals {
    fn merge(&mut self, share: &Self) {
        self.words += share.words;
        self.distinct += share.distinct;
    }
    fn remove(&mut self, share: &Self) {
        self.words -= share.words;
        self.distinct -= share.distinct;
    }
}

/// Totals at the end of the job.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WordTotals {
    pub words: u64,
    pub distinct: u64,
}

#[derive(Clone)]
struct CountWords {
    state: Option<ValueStateHandle<u64>>,
    /// The job's totals, each instance's share once (an instance finishing
    /// again after a restart replaces its share).
    shares: InstanceShares<WordTotals>,
}

impl KeyedProcessFunction<String, String, WordCount> for CountWords {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<String>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }

    fn process(
        &mut self,
        word: String,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Vec<WordCount>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let count = ctx.value(handle).modify(
            || 0,
            |count| {
                *count += 1;
                *count
            },
        )?;
        out.push(WordCount { word, count });
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<String>,
        _out: &mut Vec<WordCount>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let mut local = WordTotals::default();
        state.for_each_value(handle, |_, &count| {
            local.words += count;
            local.distinct += 1;
        })?;
        self.shares.replace(state.key_group_range().start, local)?;
        Ok(())
    }
}

/// What a built `wordcount` job reports once it ends.
pub struct WordcountJob {
    pub totals: Arc<Mutex<WordTotals>>,
}

impl WordcountJob {
    pub fn totals(&self) -> WordTotals {
        *self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn result_line(&self) -> String {
        let t = self.totals();
        format!("RESULT words={} distinct={}", t.words, t.distinct)
    }
}

/// Adds `wordcount` to `env`. Fails at once if the input does not exist or is
/// neither a regular file nor a directory (a FIFO would block a worker). A
/// restore must read the same input: the source's snapshot records it, and
/// files added to a directory input since are read after the restore.
pub fn build(
    env: &StreamEnvironment,
    params: &WordcountParams,
) -> Result<WordcountJob, ConnectorError> {
    env.set_job_parameters(
        params
            .job_parameters()
            .map_err(|e| ConnectorError::Config(e.to_string()))?,
    );
    let totals = Arc::new(Mutex::new(WordTotals::default()));
    let counts = env
        .read_text_lines(&params.input)?
        .uid("text-lines")
        .flat_map(|line: String| words(&line).collect::<Vec<_>>())
        .name("Split words")
        .uid("split-words")
        .key_by(|word: &String| word.clone())
        .process(CountWords {
            state: None,
            shares: InstanceShares::new(Arc::clone(&totals)),
        })
        .name("Count words")
        .uid("count-words");
    match &params.output {
        Some(dir) => counts.write_lines(dir)?,
        None => {
            counts.count();
        }
    }
    Ok(WordcountJob { totals })
}
