//! The idle hook: a task with no input to process fires the processing-time
//! timers of its operators (head and chain) once the job's clock passed them,
//! never before, and otherwise says when the next one is due.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate_runtime::channel::{ChannelReceiver, ChannelSender, Signal, channel};
use flowstate_runtime::message::Message;
use flowstate_runtime::pipeline::{OperatorPart, OperatorStage, Pipeline, StageIdentity};
use flowstate_runtime::task::{OneInputTask, Step, Task, TwoInputTask};
use flowstate_runtime::{
    Barrier, BarrierKind, Operator, TaskError, TwoInputOperator, UserError, Watermark,
};
use flowstate_state::{Clock, ManualClock, SharedClock, SystemClock};

type Log = Arc<Mutex<Vec<u64>>>;

/// The end of a pipeline that records the records reaching it.
struct Recorder(Log);

impl Pipeline<u64> for Recorder {
    fn push(&mut self, batch: &mut Vec<u64>) -> Result<(), TaskError> {
        self.0.lock().unwrap().append(batch);
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    fn flush(&mut self, _partial: bool) -> Result<bool, TaskError> {
        Ok(true)
    }
    fn snapshot(&mut self, _b: Barrier, _p: &mut Vec<OperatorPart>) -> Result<(), TaskError> {
        Ok(())
    }
    fn barrier(&mut self, _barrier: Barrier) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark(&mut self, _watermark: Watermark) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark_status(
        &mut self,
        _status: flowstate_runtime::WatermarkStatus,
    ) -> Result<(), TaskError> {
        Ok(())
    }
    fn notify_complete(&mut self, _id: u64) -> Result<(), TaskError> {
        Ok(())
    }
    fn notify_aborted(&mut self, _id: u64) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Each record is a processing time at which to emit it (an alarm); emits
/// nothing else. It checks that it is never called before its time.
#[derive(Default)]
struct Alarms {
    pending: Vec<i64>,
}

impl Alarms {
    fn fire(&mut self, now_ms: i64, out: &mut Vec<u64>) -> Result<(), UserError> {
        let first = self.pending.first().copied();
        if first.is_none_or(|t| t > now_ms) {
            return Err(format!("called at {now_ms} with nothing due ({first:?})").into());
        }
        let due = self.pending.partition_point(|&t| t <= now_ms);
        out.extend(self.pending.drain(..due).map(|t| t as u64));
        Ok(())
    }
    fn add(&mut self, input: &mut Vec<u64>) {
        self.pending.extend(input.drain(..).map(|t| t as i64));
        self.pending.sort_unstable();
    }
}

impl Operator<u64, u64> for Alarms {
    fn process_batch(
        &mut self,
        input: &mut Vec<u64>,
        _out: &mut Vec<u64>,
    ) -> Result<(), UserError> {
        self.add(input);
        Ok(())
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.pending.first().copied()
    }
    fn on_processing_time(&mut self, now_ms: i64, out: &mut Vec<u64>) -> Result<(), UserError> {
        self.fire(now_ms, out)
    }
}

impl TwoInputOperator<u64, u64, u64> for Alarms {
    fn process_batch1(&mut self, input: &mut Vec<u64>, _: &mut Vec<u64>) -> Result<(), UserError> {
        self.add(input);
        Ok(())
    }
    fn process_batch2(&mut self, input: &mut Vec<u64>, _: &mut Vec<u64>) -> Result<(), UserError> {
        self.add(input);
        Ok(())
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.pending.first().copied()
    }
    fn on_processing_time(&mut self, now_ms: i64, out: &mut Vec<u64>) -> Result<(), UserError> {
        self.fire(now_ms, out)
    }
}

/// Passes records on; wants no processing time.
struct Forward;

impl Operator<u64, u64> for Forward {
    fn process_batch(&mut self, input: &mut Vec<u64>, out: &mut Vec<u64>) -> Result<(), UserError> {
        out.append(input);
        Ok(())
    }
}

fn id(name: &str) -> StageIdentity {
    StageIdentity {
        name: name.into(),
        uid: name.into(),
        subtask: 0,
    }
}

fn pair() -> (ChannelSender<u64>, ChannelReceiver<u64>) {
    channel(64, Signal::new(), Signal::new())
}

fn send(tx: &ChannelSender<u64>, message: Message<u64>) {
    assert!(tx.try_send(message).is_ok(), "channel has room");
}

/// Steps until the task does not progress; returns that step.
fn run(task: &mut dyn Task) -> Step {
    loop {
        match task.step().unwrap() {
            Step::Progress => {}
            other => return other,
        }
    }
}

fn taken(log: &Log) -> Vec<u64> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// `Forward -> Alarms -> Recorder`: the alarms are in the chain, behind a
/// stage that wants no processing time (the minimum is forwarded).
fn alarm_task(
    channels: Vec<ChannelReceiver<u64>>,
    clock: SharedClock,
    out: &Log,
) -> OneInputTask<u64> {
    let alarms = OperatorStage::new(
        id("alarms"),
        Box::new(Alarms::default()),
        Box::new(Recorder(out.clone())),
    );
    let head = OperatorStage::new(id("forward"), Box::new(Forward), Box::new(alarms));
    OneInputTask::new("t".into(), channels, Box::new(head), None).with_clock(clock)
}

#[test]
fn an_idle_task_fires_due_timers_with_no_further_input_and_never_before() {
    let clock = ManualClock::new(0);
    let (tx, rx) = pair();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut task = alarm_task(vec![rx], clock.clone(), &out);
    send(&tx, Message::Batch(vec![100, 250, 100]));
    // A manual clock gives no instant to park until: the caller steps again.
    assert_eq!(run(&mut task), Step::Idle { wake_at: None });
    assert_eq!(taken(&out), Vec::<u64>::new());
    clock.set_ms(99);
    assert_eq!(run(&mut task), Step::Idle { wake_at: None });
    assert_eq!(
        taken(&out),
        Vec::<u64>::new(),
        "nothing fires before it is due"
    );
    clock.set_ms(100);
    assert_eq!(task.step().unwrap(), Step::Progress, "a firing is progress");
    assert_eq!(taken(&out), vec![100, 100]);
    assert_eq!(run(&mut task), Step::Idle { wake_at: None });
    clock.set_ms(1_000);
    run(&mut task);
    assert_eq!(taken(&out), vec![250]);
    // Nothing pending: the clock is not even asked.
    clock.set_ms(5_000);
    assert_eq!(run(&mut task), Step::Idle { wake_at: None });
    assert_eq!(taken(&out), Vec::<u64>::new());
}

#[test]
fn on_the_system_clock_the_idle_step_wakes_when_the_next_timer_is_due() {
    let (tx, rx) = pair();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut task = alarm_task(vec![rx], Arc::new(SystemClock), &out);
    let before = Instant::now();
    let now = SystemClock.now_ms();
    send(&tx, Message::Batch(vec![(now + 60_000) as u64]));
    let Step::Idle { wake_at: Some(at) } = run(&mut task) else {
        panic!("the step must say when the timer is due");
    };
    assert!(at >= before + Duration::from_secs(59), "{at:?} too early");
    assert!(
        at <= Instant::now() + Duration::from_secs(60),
        "{at:?} too late"
    );
    assert_eq!(taken(&out), Vec::<u64>::new());
    // One already due fires in the idle step, with no input after it.
    send(&tx, Message::Batch(vec![(now - 1) as u64]));
    run(&mut task);
    assert_eq!(taken(&out), vec![(now - 1) as u64]);
}

#[test]
fn timers_fire_while_a_channel_is_blocked_for_alignment() {
    let clock = ManualClock::new(0);
    let (tx0, rx0) = pair();
    let (tx1, rx1) = pair();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut task = alarm_task(vec![rx0, rx1], clock.clone(), &out);
    send(&tx0, Message::Batch(vec![10]));
    send(&tx0, Message::Barrier(Barrier::checkpoint(1)));
    send(&tx0, Message::Batch(vec![20]));
    run(&mut task);
    // Channel 0 is blocked; its 20 is not read. The firing of 10 happens
    // before the barrier completes: it belongs to checkpoint 1, like a record.
    clock.set_ms(50);
    run(&mut task);
    assert_eq!(taken(&out), vec![10]);
    send(&tx1, Message::Barrier(Barrier::checkpoint(1)));
    run(&mut task);
    run(&mut task);
    assert_eq!(taken(&out), vec![20]);
}

#[test]
fn no_idle_firing_once_event_time_ended_or_at_a_stop_with_savepoint() {
    // The end of the input's event time: as at `finish`, what is not due
    // yet is not fired by the idle hook.
    let clock = ManualClock::new(0);
    let (tx, rx) = pair();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut task = alarm_task(vec![rx], clock.clone(), &out);
    send(&tx, Message::Batch(vec![100]));
    send(&tx, Message::Watermark(Watermark::MAX));
    run(&mut task);
    clock.set_ms(200);
    assert_eq!(run(&mut task), Step::Idle { wake_at: None });
    assert_eq!(taken(&out), Vec::<u64>::new());

    // A stop-with-savepoint barrier: nothing fires after it (the savepoint
    // holds the timer) until input flows again (the savepoint failed).
    let clock = ManualClock::new(0);
    let (tx, rx) = pair();
    let mut task = alarm_task(vec![rx], clock.clone(), &out);
    send(&tx, Message::Batch(vec![100]));
    send(
        &tx,
        Message::Barrier(Barrier {
            kind: BarrierKind::StopWithSavepoint,
            ..Barrier::checkpoint(1)
        }),
    );
    run(&mut task);
    clock.set_ms(200);
    run(&mut task);
    assert_eq!(taken(&out), Vec::<u64>::new());
    send(&tx, Message::Batch(vec![300]));
    run(&mut task);
    assert_eq!(taken(&out), vec![100]);
}

#[test]
fn a_two_input_head_fires_its_timers_when_both_inputs_are_quiet() {
    let clock = ManualClock::new(0);
    let (ta, ra) = pair();
    let (tb, rb) = pair();
    let out = Arc::new(Mutex::new(Vec::new()));
    let chain = OperatorStage::new(
        id("forward"),
        Box::new(Forward),
        Box::new(Recorder(out.clone())),
    );
    let mut task = TwoInputTask::new(
        "two".into(),
        id("two"),
        vec![ra],
        vec![rb],
        Box::new(Alarms::default()),
        Box::new(chain),
        None,
    )
    .with_clock(clock.clone());
    send(&ta, Message::Batch(vec![30]));
    send(&tb, Message::Batch(vec![20]));
    assert_eq!(run(&mut task), Step::Idle { wake_at: None });
    assert_eq!(taken(&out), Vec::<u64>::new());
    clock.set_ms(25);
    run(&mut task);
    assert_eq!(taken(&out), vec![20]);
    clock.set_ms(30);
    run(&mut task);
    assert_eq!(taken(&out), vec![30]);
}
