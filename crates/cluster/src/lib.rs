//! One job across processes: a job manager (the checkpoint coordinator, the
//! HTTP API, scheduling and failover) and task managers (processes that run
//! the subtasks), as in Flink. Every process builds the same job graph from
//! the same program and arguments; the job manager checks it by the plan's
//! fingerprint at registration and assigns the subtasks.
//!
//! Owns: the control-plane protocol between the job manager and the task
//! managers ([`protocol`]) and its transport ([`rpc`]), the job manager's
//! side ([`jobmanager`]: admission, placement, the runtime's `Cluster`), a
//! task manager ([`taskmanager`]), the local cluster of `--processes N`
//! ([`local`]) and a standby job manager's election through etcd
//! ([`leader`], over [`etcd`]'s JSON gateway client). Must not touch: the data plane (channels between
//! task managers are `flowstate-network`'s), how tasks run (the runtime's),
//! or command-line flags.

pub mod etcd;
pub mod jobmanager;
pub mod leader;
pub mod local;
pub mod protocol;
pub mod rpc;
pub mod taskmanager;
