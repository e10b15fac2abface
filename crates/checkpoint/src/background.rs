//! Marks the calling thread as background work, so that its wake-ups do not
//! preempt the task threads.
//!
//! Owns: the scheduling policy of the threads that serve checkpoints (the
//! runtime's upload and coordinator threads, the storage runtime's threads).
//! Must not touch: task threads, which keep the default policy.
//!
//! Why: on a machine with as many task threads as cores, a snapshot handed to
//! an upload thread wakes it while another task is inside its synchronous
//! checkpoint pause; under the default policy the woken thread preempts that
//! task for a whole time slice (milliseconds of serialisation), so the pause
//! grew from tens of microseconds to 10-30 ms (seen with `perf record -e
//! sched:sched_switch`: the task switched out, state R, to `flowstate-upload`,
//! `flowstate-coordinator` or `flowstate-storage` within microseconds of the
//! barrier, its own snapshot having taken 30-150 us of CPU). `SCHED_BATCH` (Linux) keeps the
//! thread's fair share of CPU but gives up wake-up preemption: it runs on an
//! idle core at once, otherwise at the next scheduling point.

/// Marks the calling thread as background work (best effort: a refusal is
/// logged and ignored; a no-op outside Linux).
pub fn mark_current_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_param is plain data; pid 0 is the calling thread.
        let result = unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param)
        };
        if result != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not mark a runtime thread as background work"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_marked_thread_runs_under_sched_batch_and_others_do_not() {
        let marked = std::thread::spawn(|| {
            super::mark_current_thread();
            // SAFETY: no arguments but the calling thread's id 0.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("thread");
        assert_eq!(marked, libc::SCHED_BATCH);
        let unmarked = std::thread::spawn(|| unsafe { libc::sched_getscheduler(0) })
            .join()
            .expect("thread");
        assert_eq!(unmarked, libc::SCHED_OTHER);
    }
}
