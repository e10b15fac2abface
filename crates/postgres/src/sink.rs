//! [`PostgresSink`]: rows into a table, exactly once, by two-phase commit with
//! the database's own `PREPARE TRANSACTION` / `COMMIT PREPARED`.
//!
//! Each writer holds two connections: `data`, with the open transaction that
//! receives the rows since the last barrier, and `control`, which commits and
//! rolls back prepared transactions (`COMMIT PREPARED` cannot run inside a
//! transaction block, and the data connection may have one open).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use flowstate_runtime::checkpoint::{OperatorListState, decode_list, encode_list};
use flowstate_runtime::{Barrier, Data, PreparedCommit, Sink, SinkWriter, SubtaskInfo, UserError};
use flowstate_state::RedistributionMode;
use postgres::config::Host;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Statement};

use crate::error::{PostgresError, describe};
use crate::names;
use crate::value::SqlValue;

/// Name of the sink's operator list state (`Union`): the prepared transactions
/// not yet committed, `{name, checkpoint}` as JSON.
pub const PENDING_STATE: &str = "pending-transactions";

/// Rows buffered before they are written into the open transaction early.
pub const DEFAULT_BUFFER_ROWS: usize = 10_000;

/// How long a statement waits for a row lock before it fails.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection attempt may take when the URL sets no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most rows in one `INSERT` statement (PostgreSQL allows 65535 parameters).
const MAX_ROWS_PER_STATEMENT: usize = 1000;
const MAX_PARAMETERS: usize = 65_535;

/// How rows reach the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `INSERT ... ON CONFLICT (key_columns) DO UPDATE`: the table holds the
    /// latest row per key. Within one checkpoint only the latest row of a key is
    /// written. Needs a unique index on exactly the key columns, and every key
    /// must reach one sink instance (key the stream by the key columns).
    Upsert { key_columns: Vec<String> },
    /// Plain `INSERT`: every record is a row.
    Append,
}

/// Maps a record to its row: one value per column, in the sink's column order.
pub type RowFn<T> = Arc<dyn Fn(&T) -> Vec<SqlValue> + Send + Sync>;

/// Writes records as rows of one PostgreSQL table, exactly once with checkpoints.
///
/// At a barrier each writer writes the rows since the last barrier into its open
/// transaction and prepares it as `flowstate:<job>:<uid>:<subtask>:<checkpoint>`
/// (see [`crate::names`]); the prepared names are the `Union` list state
/// [`PENDING_STATE`]. When the checkpoint completes the writer commits them.
/// A checkpoint without rows prepares nothing and records nothing.
///
/// When the writers are created, instance 0 recovers (all writers of a job are
/// created before any writes): it commits every prepared transaction named in the
/// restored state (a name that no longer exists was committed before), then rolls
/// back every other prepared transaction of this sink: same operator uid, and
/// either the same job id or holding a lock on the table (a savepoint restored
/// into a new job, or a killed run started afresh). Their rows are produced
/// again by the replay. **A table and an operator uid belong to one job at a
/// time.**
///
/// Without checkpoints, [`SinkWriter::finish`] commits everything at the end of
/// a bounded input.
///
/// An aborted checkpoint's prepared transaction is **kept** and committed with
/// the next completed checkpoint ([`SinkWriter::abort`] only logs): the job
/// does not rewind after an abort, so its rows come from records that will
/// never be read again, and rolling it back would lose them. (After a
/// failure, recovery rolls back what the restored checkpoint does not name:
/// those rows are replayed.) Rolling back on abort would need every
/// prepared row kept in memory to write it again, which the early writes
/// (`buffer_rows`) exist to avoid.
pub struct PostgresSink<T> {
    settings: Arc<Settings>,
    row: RowFn<T>,
}

/// Everything a writer needs besides the row mapping.
#[derive(Clone)]
struct Settings {
    config: Config,
    endpoint: String,
    table: String,
    columns: Vec<String>,
    mode: Mode,
    buffer_rows: usize,
    lock_timeout: Duration,
}

impl<T> std::fmt::Debug for PostgresSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("endpoint", &self.settings.endpoint)
            .field("table", &self.settings.table)
            .field("columns", &self.settings.columns)
            .field("mode", &self.settings.mode)
            .finish()
    }
}

/// `host:port` of every host of the configuration, for messages.
fn endpoint_of(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        return "(no host in the URL)".to_owned();
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl<T: Data> PostgresSink<T> {
    /// A sink writing `columns` of `table` (as PostgreSQL resolves the name,
    /// e.g. `counts` or `analytics.counts`; column names are exact) at `url`
    /// (`postgres://user:password@host:port/database`, or key=value form).
    /// `row` returns one value per column.
    ///
    /// Checks the settings only; the table is checked when writers are created
    /// (or by [`PostgresSink::check`]).
    pub fn new(
        url: &str,
        table: &str,
        columns: &[&str],
        mode: Mode,
        row: impl Fn(&T) -> Vec<SqlValue> + Send + Sync + 'static,
    ) -> Result<Self, PostgresError> {
        let mut config = Config::from_str(url).map_err(|e| {
            PostgresError::Config(format!("invalid connection URL: {}", describe(&e)))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("flowstate");
        }
        if table.trim().is_empty() {
            return Err(PostgresError::Config("the table name is empty".into()));
        }
        if columns.is_empty() {
            return Err(PostgresError::Config("no columns to write".into()));
        }
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        let mut seen = HashSet::new();
        if let Some(dup) = columns.iter().find(|c| !seen.insert(*c)) {
            return Err(PostgresError::Config(format!(
                "column '{dup}' is listed twice"
            )));
        }
        if let Mode::Upsert { key_columns } = &mode {
            if key_columns.is_empty() {
                return Err(PostgresError::Config(
                    "upsert mode needs key columns".into(),
                ));
            }
            if let Some(k) = key_columns.iter().find(|k| !columns.contains(k)) {
                return Err(PostgresError::Config(format!(
                    "key column '{k}' is not one of the columns written {columns:?}"
                )));
            }
        }
        let endpoint = endpoint_of(&config);
        Ok(Self {
            settings: Arc::new(Settings {
                config,
                endpoint,
                table: table.to_owned(),
                columns,
                mode,
                buffer_rows: DEFAULT_BUFFER_ROWS,
                lock_timeout: DEFAULT_LOCK_TIMEOUT,
            }),
            row: Arc::new(row),
        })
    }

    /// Rows buffered before they go into the open transaction (default
    /// [`DEFAULT_BUFFER_ROWS`]; in upsert mode, distinct keys, and only while no
    /// prepared transaction of the writer waits for its commit).
    pub fn with_buffer_rows(mut self, rows: usize) -> Self {
        Arc::make_mut(&mut self.settings).buffer_rows = rows.max(1);
        self
    }

    /// How long a write waits for a row lock held by another transaction before
    /// it fails the task (default [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.settings).lock_timeout = timeout;
        self
    }

    /// The server as messages name it: `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.settings.endpoint
    }

    /// Connects and checks the table and its columns (what creating a writer
    /// does), for an early, clear error before a job starts.
    pub fn check(&self) -> Result<(), PostgresError> {
        let mut client = self.settings.connect()?;
        self.settings.resolve_table(&mut client).map(|_| ())
    }
}

/// The table as the server resolved it.
struct ResolvedTable {
    oid: u32,
    /// The name to put into SQL (quoted and qualified as needed).
    sql_name: String,
}

impl Settings {
    fn connect(&self) -> Result<Client, PostgresError> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| PostgresError::Connect {
                endpoint: self.endpoint.clone(),
                detail: describe(&e),
            })?;
        client
            .batch_execute(&format!(
                "SET lock_timeout = {}",
                self.lock_timeout.as_millis().max(1)
            ))
            .map_err(|e| self.statement_error("setting the lock timeout", &e))?;
        Ok(client)
    }

    fn statement_error(&self, action: &str, error: &postgres::Error) -> PostgresError {
        let (endpoint, table, action, detail) = (
            self.endpoint.clone(),
            self.table.clone(),
            action.to_owned(),
            describe(error),
        );
        if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            PostgresError::LockTimeout {
                endpoint,
                table,
                action,
                detail,
            }
        } else {
            PostgresError::Statement {
                endpoint,
                table,
                action,
                detail,
            }
        }
    }

    /// The table exists, has the columns, and (upsert) a unique index on the keys.
    fn resolve_table(&self, client: &mut Client) -> Result<ResolvedTable, PostgresError> {
        let row = client
            .query_opt(
                "SELECT c.oid, c.oid::regclass::text FROM pg_class c \
                 WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
                &[&self.table],
            )
            .map_err(|e| {
                // A malformed name (e.g. unbalanced quotes) is a missing table too.
                if e.code() == Some(&SqlState::INVALID_NAME) {
                    PostgresError::MissingTable {
                        table: self.table.clone(),
                        endpoint: self.endpoint.clone(),
                    }
                } else {
                    self.statement_error("looking up the table", &e)
                }
            })?;
        let Some(row) = row else {
            return Err(PostgresError::MissingTable {
                table: self.table.clone(),
                endpoint: self.endpoint.clone(),
            });
        };
        let oid: u32 = row.get(0);
        let sql_name: String = row.get(1);
        let present: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .map_err(|e| self.statement_error("looking up the table's columns", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !present.contains(c))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(PostgresError::MissingColumns {
                table: self.table.clone(),
                missing,
                present,
            });
        }
        if let Mode::Upsert { key_columns } = &self.mode {
            let mut wanted = key_columns.clone();
            wanted.sort();
            wanted.dedup();
            let indexes: Vec<Vec<String>> = client
                .query(
                    "SELECT ARRAY(SELECT a.attname::text FROM pg_attribute a \
                       WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)), \
                       i.indnkeyatts::int4 \
                     FROM pg_index i \
                     WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL",
                    &[&oid],
                )
                .map_err(|e| self.statement_error("looking up the table's unique indexes", &e))?
                .iter()
                .filter(|r| r.get::<_, i32>(1) as usize == wanted.len())
                .map(|r| {
                    let mut cols: Vec<String> = r.get(0);
                    cols.sort();
                    cols
                })
                .collect();
            if !indexes.contains(&wanted) {
                return Err(PostgresError::NoUniqueKey {
                    table: self.table.clone(),
                    keys: key_columns.clone(),
                });
            }
        }
        Ok(ResolvedTable { oid, sql_name })
    }

    /// `INSERT` of `rows` rows (with `ON CONFLICT` in upsert mode).
    fn insert_sql(&self, table: &str, rows: usize) -> String {
        let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
        let width = self.columns.len();
        let mut sql = format!(
            "INSERT INTO {table} ({}) VALUES ",
            self.columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..width {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", r * width + c + 1));
            }
            sql.push(')');
        }
        if let Mode::Upsert { key_columns } = &self.mode {
            let keys = key_columns.iter().map(|c| quote(c)).collect::<Vec<_>>();
            let updates: Vec<String> = self
                .columns
                .iter()
                .filter(|c| !key_columns.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
                .collect();
            if updates.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    keys.join(", "),
                    updates.join(", ")
                ));
            }
        }
        sql
    }

    fn rows_per_statement(&self) -> usize {
        (MAX_PARAMETERS / self.columns.len()).clamp(1, MAX_ROWS_PER_STATEMENT)
    }
}

/// A prepared transaction waiting for its checkpoint to complete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PendingTransaction {
    name: String,
    checkpoint: u64,
}

fn encode_pending(pending: &[PendingTransaction]) -> Result<Vec<OperatorListState>, UserError> {
    Ok(vec![encode_list(
        PENDING_STATE,
        RedistributionMode::Union,
        pending,
    )?])
}

fn decode_pending(subtask: &SubtaskInfo) -> Result<Vec<PendingTransaction>, PostgresError> {
    let Some(elements) = subtask
        .restored
        .as_ref()
        .and_then(|r| r.list(PENDING_STATE))
    else {
        return Ok(Vec::new());
    };
    decode_list(PENDING_STATE, elements).map_err(|e| PostgresError::DamagedState {
        state: PENDING_STATE.into(),
        operator: subtask.operator.clone(),
        detail: e.to_string(),
    })
}

/// Commits prepared transaction `name`; one that does not exist was committed
/// (or resolved) before: done.
fn commit_prepared(
    settings: &Settings,
    client: &mut Client,
    name: &str,
) -> Result<(), PostgresError> {
    match client.batch_execute(&format!("COMMIT PREPARED {}", names::literal(name))) {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(()),
        Err(e) => Err(settings.statement_error(&format!("COMMIT PREPARED '{name}'"), &e)),
    }
}

/// After a restore (and at every start): commit what the restored checkpoint
/// prepared, roll back every other prepared transaction of this sink. Returns
/// (committed, rolled back) names, for tests and logs.
fn recover(
    settings: &Settings,
    client: &mut Client,
    table: &ResolvedTable,
    subtask: &SubtaskInfo,
    restored: &[PendingTransaction],
) -> Result<(Vec<String>, Vec<String>), PostgresError> {
    let mut committed = Vec::new();
    for pending in restored {
        commit_prepared(settings, client, &pending.name)?;
        committed.push(pending.name.clone());
    }
    let job = names::escape(&subtask.job_id);
    let uid = names::escape(&subtask.uid);
    let prepared = client
        .query(
            "SELECT p.gid, EXISTS (SELECT 1 FROM pg_locks x JOIN pg_locks r \
                 ON r.virtualtransaction = x.virtualtransaction \
               WHERE x.locktype = 'transactionid' AND x.transactionid = p.transaction \
                 AND r.locktype = 'relation' AND r.relation = $1) \
             FROM pg_prepared_xacts p \
             WHERE p.database = current_database() AND p.gid LIKE 'flowstate:%'",
            &[&table.oid],
        )
        .map_err(|e| settings.statement_error("listing prepared transactions", &e))?;
    let mut rolled_back = Vec::new();
    for row in prepared {
        let gid: String = row.get(0);
        let on_table: bool = row.get(1);
        let Some(parsed) = names::parse(&gid) else {
            continue;
        };
        if parsed.uid != uid || !(parsed.job == job || on_table) {
            continue;
        }
        match client.batch_execute(&format!("ROLLBACK PREPARED {}", names::literal(&gid))) {
            Ok(()) => rolled_back.push(gid),
            // Resolved meanwhile by someone else.
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
            Err(e) => {
                return Err(settings.statement_error(&format!("ROLLBACK PREPARED '{gid}'"), &e));
            }
        }
    }
    Ok((committed, rolled_back))
}

impl<T: Data> Sink<T> for PostgresSink<T> {
    /// Two-phase commit: output becomes visible when a checkpoint completes.
    fn commits_on_checkpoint(&self) -> bool {
        true
    }

    fn create_writer(&self, subtask: &SubtaskInfo) -> Result<Box<dyn SinkWriter<T>>, UserError> {
        let settings = Arc::clone(&self.settings);
        let mut control = settings.connect()?;
        let table = settings.resolve_table(&mut control)?;
        if subtask.index == 0 {
            // Writers are all created before any of them writes, so instance 0
            // resolves every prepared transaction first (union state: it has
            // every instance's names).
            let restored = decode_pending(subtask)?;
            recover(&settings, &mut control, &table, subtask, &restored)?;
        }
        let data = DataConnection::new(settings.connect()?);
        let key_indexes = match &settings.mode {
            Mode::Upsert { key_columns } => key_columns
                .iter()
                .filter_map(|k| settings.columns.iter().position(|c| c == k))
                .collect(),
            Mode::Append => Vec::new(),
        };
        Ok(Box::new(PostgresWriter {
            full_sql: settings.insert_sql(&table.sql_name, settings.rows_per_statement()),
            table,
            row: Arc::clone(&self.row),
            job: subtask.job_id.clone(),
            uid: subtask.uid.clone(),
            subtask: subtask.index,
            data: Some(data),
            control,
            rows: Vec::new(),
            keys: HashMap::new(),
            key_indexes,
            pending: Vec::new(),
            turns: Arc::new(Turns::new()),
            next_turn: 1,
            settings,
        }))
    }
}

/// A data connection and what belongs to it.
struct DataConnection {
    client: Client,
    /// The `INSERT` of a full chunk of rows, prepared on `client` once.
    full_statement: Option<Statement>,
    /// `BEGIN` was sent and rows were written since.
    open: bool,
}

impl DataConnection {
    fn new(client: Client) -> Self {
        Self {
            client,
            full_statement: None,
            open: false,
        }
    }
}

/// Data connections kept for reuse by a writer and its deferred prepares:
/// one for the epoch being written, one for the transaction being prepared.
const DATA_CONNECTIONS: usize = 2;

/// The order of a writer's deferred prepares, and the data connections they
/// hand back. Prepare k runs only after prepare k - 1 finished (actions may
/// run on different upload threads, in any order): a completed checkpoint
/// then implies every transaction it names was prepared, so `commit` never
/// finds one still missing (it would take it for committed and lose it), and
/// an early `COMMIT PREPARED` finds its transaction prepared. Once one failed
/// or was dropped unrun, the writer is *broken*: its rows are lost to this
/// attempt, every later prepare fails (no later checkpoint completes) and the
/// writer fails its task at its next call, so the job restarts from a
/// checkpoint taken before them.
struct Turns {
    state: Mutex<TurnState>,
    changed: Condvar,
}

struct TurnState {
    /// The last prepare that finished.
    done_through: u64,
    broken: Option<String>,
    /// Idle data connections (at most [`DATA_CONNECTIONS`]).
    free: Vec<DataConnection>,
}

impl Turns {
    /// The second connection is opened by the first prepare that needs it,
    /// on its upload thread.
    fn new() -> Self {
        Self {
            state: Mutex::new(TurnState {
                done_through: 0,
                broken: None,
                free: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (an upload thread, never a worker) until prepare `turn - 1`
    /// finished; an error if the writer is broken.
    fn wait_turn(&self, turn: u64) -> Result<(), String> {
        let mut state = self.lock();
        loop {
            if let Some(reason) = &state.broken {
                return Err(reason.clone());
            }
            if state.done_through + 1 >= turn {
                return Ok(());
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Prepare `turn` finished: with its connection on success, with the
    /// reason the writer is broken otherwise.
    fn finish(&self, turn: u64, outcome: Result<Option<DataConnection>, String>) {
        let mut state = self.lock();
        state.done_through = state.done_through.max(turn);
        match outcome {
            Ok(Some(connection)) if state.free.len() < DATA_CONNECTIONS => {
                state.free.push(connection)
            }
            Ok(_) => {}
            Err(reason) => {
                state.broken.get_or_insert(reason);
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    fn broken(&self) -> Option<String> {
        self.lock().broken.clone()
    }

    /// An idle data connection, if one is free now (never waits).
    fn take_free(&self) -> Option<DataConnection> {
        self.lock().free.pop()
    }
}

/// The deferred part of one prepare: what the synchronous half moved out of
/// the writer. Dropped without running, it breaks the writer.
struct DeferredPrepare {
    turn: u64,
    turns: Arc<Turns>,
    settings: Arc<Settings>,
    table_sql: String,
    full_sql: String,
    connection: Option<DataConnection>,
    rows: Vec<Vec<SqlValue>>,
    /// The upsert index of `rows`, only to be freed off the worker.
    _keys: HashMap<Vec<SqlValue>, usize>,
    /// Older prepared transactions to commit first (upsert; see
    /// `prepare_commit_deferred`).
    commit_first: Vec<String>,
    /// The name to prepare the transaction under, if there is one.
    name: Option<String>,
    ran: bool,
}

impl DeferredPrepare {
    fn run(mut self) -> Result<(), PostgresError> {
        self.ran = true;
        let broken = |detail: String| PostgresError::PrepareFailed {
            table: self.settings.table.clone(),
            detail,
        };
        if let Err(reason) = self.turns.wait_turn(self.turn) {
            return Err(broken(reason));
        }
        let outcome = self.prepare();
        match outcome {
            Ok(connection) => {
                self.turns.finish(self.turn, Ok(connection));
                Ok(())
            }
            Err(e) => {
                self.turns.finish(self.turn, Err(e.to_string()));
                Err(e)
            }
        }
    }

    /// Returns the connection used, if one was needed.
    fn prepare(&mut self) -> Result<Option<DataConnection>, PostgresError> {
        let settings = Arc::clone(&self.settings);
        if self.connection.is_none() && self.commit_first.is_empty() && self.rows.is_empty() {
            // Only the turn: this snapshot names earlier transactions.
            return Ok(None);
        }
        let mut connection = match self.connection.take() {
            Some(c) => c,
            None => match self.turns.take_free() {
                Some(c) => c,
                // Both are in use (one was dropped with a failed prepare, or
                // the writer holds one for early writes): a new one.
                None => DataConnection::new(settings.connect()?),
            },
        };
        if !self.commit_first.is_empty() && connection.open {
            // Cannot happen: no early writes while transactions are pending
            // in upsert mode. `COMMIT PREPARED` needs no open transaction.
            return Err(PostgresError::Statement {
                endpoint: settings.endpoint.clone(),
                table: settings.table.clone(),
                action: "committing older prepared transactions early".into(),
                detail: "the connection has an open transaction".into(),
            });
        }
        for name in &self.commit_first {
            commit_prepared(&settings, &mut connection.client, name)?;
        }
        let rows = std::mem::take(&mut self.rows);
        write_rows(
            &settings,
            &self.table_sql,
            &self.full_sql,
            &mut connection,
            rows,
        )?;
        if let Some(name) = &self.name
            && connection.open
        {
            connection
                .client
                .batch_execute(&format!("PREPARE TRANSACTION {}", names::literal(name)))
                .map_err(|e| {
                    settings.statement_error(&format!("PREPARE TRANSACTION '{name}'"), &e)
                })?;
            connection.open = false;
        }
        Ok(Some(connection))
    }
}

impl Drop for DeferredPrepare {
    fn drop(&mut self) {
        if !self.ran {
            self.turns.finish(
                self.turn,
                Err("a deferred PREPARE TRANSACTION was dropped before it ran".into()),
            );
        }
    }
}

/// Writes `rows` into `connection`'s open transaction (opening it).
fn write_rows(
    settings: &Settings,
    table_sql: &str,
    full_sql: &str,
    connection: &mut DataConnection,
    rows: Vec<Vec<SqlValue>>,
) -> Result<(), PostgresError> {
    if rows.is_empty() {
        return Ok(());
    }
    if !connection.open {
        connection
            .client
            .batch_execute("BEGIN")
            .map_err(|e| settings.statement_error("BEGIN", &e))?;
        connection.open = true;
    }
    let per_statement = settings.rows_per_statement();
    for chunk in rows.chunks(per_statement) {
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .flat_map(|row| row.iter().map(|v| v as &(dyn ToSql + Sync)))
            .collect();
        let result = if chunk.len() == per_statement {
            let statement = match &connection.full_statement {
                Some(s) => s.clone(),
                None => {
                    let s = connection
                        .client
                        .prepare(full_sql)
                        .map_err(|e| settings.statement_error("preparing the INSERT", &e))?;
                    connection.full_statement = Some(s.clone());
                    s
                }
            };
            connection.client.execute(&statement, &params)
        } else {
            let sql = settings.insert_sql(table_sql, chunk.len());
            connection.client.execute(sql.as_str(), &params)
        };
        result.map_err(|e| settings.statement_error("INSERT", &e))?;
    }
    Ok(())
}

/// One instance of the sink; see [`PostgresSink`].
///
/// The first commit phase is split: the synchronous half (in the task's
/// pause) only moves the buffered rows and the connection holding the open
/// transaction into a [`DeferredPrepare`] and records the transaction's name
/// as pending; the upload thread writes the rows and runs `PREPARE
/// TRANSACTION` before the snapshot is acknowledged. Meanwhile the writer
/// writes the next epoch on its other data connection.
struct PostgresWriter<T> {
    settings: Arc<Settings>,
    table: ResolvedTable,
    row: RowFn<T>,
    job: String,
    uid: String,
    subtask: u32,
    /// The connection of the epoch being written, if it has one (it gets one
    /// for early writes, when one is free).
    data: Option<DataConnection>,
    /// The connection that commits and rolls back prepared transactions.
    control: Client,
    full_sql: String,
    /// Rows since the last write into the open transaction.
    rows: Vec<Vec<SqlValue>>,
    /// Upsert mode: key values -> index in `rows` (the latest row per key wins).
    keys: HashMap<Vec<SqlValue>, usize>,
    key_indexes: Vec<usize>,
    /// Prepared (or being prepared by a deferred action), not yet committed,
    /// oldest first.
    pending: Vec<PendingTransaction>,
    turns: Arc<Turns>,
    /// The turn of the next deferred prepare.
    next_turn: u64,
}

impl<T> PostgresWriter<T> {
    fn upsert(&self) -> bool {
        matches!(self.settings.mode, Mode::Upsert { .. })
    }

    fn buffer(&mut self, row: Vec<SqlValue>) {
        if self.upsert() {
            let key: Vec<SqlValue> = self.key_indexes.iter().map(|&i| row[i].clone()).collect();
            match self.keys.get(&key) {
                Some(&at) => self.rows[at] = row,
                None => {
                    self.keys.insert(key, self.rows.len());
                    self.rows.push(row);
                }
            }
        } else {
            self.rows.push(row);
        }
    }

    /// Fails once a deferred prepare failed or was dropped.
    fn check_broken(&self) -> Result<(), PostgresError> {
        match self.turns.broken() {
            Some(detail) => Err(PostgresError::PrepareFailed {
                table: self.settings.table.clone(),
                detail,
            }),
            None => Ok(()),
        }
    }

    /// Writes the buffered rows into the open transaction (opening it), if
    /// the epoch has a connection or one is free; otherwise they stay
    /// buffered until the barrier.
    fn flush(&mut self) -> Result<(), PostgresError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        if self.data.is_none() {
            self.data = self.turns.take_free();
        }
        let Some(connection) = self.data.as_mut() else {
            return Ok(());
        };
        let rows = std::mem::take(&mut self.rows);
        self.keys.clear();
        write_rows(
            &self.settings,
            &self.table.sql_name,
            &self.full_sql,
            connection,
            rows,
        )
    }

    /// Commits the pending transactions of checkpoints up to `checkpoint`.
    /// Every one of them was prepared: their checkpoints completed, so their
    /// deferred prepares (and all earlier ones) finished.
    fn commit_up_to(&mut self, checkpoint: u64) -> Result<(), PostgresError> {
        while let Some(first) = self.pending.first() {
            if first.checkpoint > checkpoint {
                break;
            }
            commit_prepared(&self.settings, &mut self.control, &first.name)?;
            self.pending.remove(0);
        }
        Ok(())
    }

    /// May rows be written into the open transaction now? A prepared
    /// transaction holds its rows' locks until it is committed, so in upsert
    /// mode a write of the same key would wait for a commit that only this
    /// writer could issue.
    fn may_write_early(&self) -> bool {
        !self.upsert() || self.pending.is_empty()
    }
}

impl<T: Data> SinkWriter<T> for PostgresWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
        self.check_broken()?;
        let width = self.settings.columns.len();
        for record in batch.drain(..) {
            let row = (self.row)(&record);
            if row.len() != width {
                return Err(PostgresError::RowWidth {
                    table: self.settings.table.clone(),
                    got: row.len(),
                    expected: width,
                }
                .into());
            }
            self.buffer(row);
        }
        if self.rows.len() >= self.settings.buffer_rows && self.may_write_early() {
            self.flush()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UserError> {
        // With checkpoints everything was committed by the final checkpoint
        // (whose deferred prepare, like every earlier one, finished); without,
        // this is the one commit.
        self.check_broken()?;
        self.commit_up_to(u64::MAX)?;
        if !self.rows.is_empty() && self.data.is_none() {
            let connection = match self.turns.take_free() {
                Some(c) => c,
                None => DataConnection::new(self.settings.connect()?),
            };
            self.data = Some(connection);
        }
        self.flush()?;
        if let Some(connection) = self.data.as_mut()
            && connection.open
        {
            let settings = Arc::clone(&self.settings);
            connection
                .client
                .batch_execute("COMMIT")
                .map_err(|e| settings.statement_error("COMMIT", &e))?;
            connection.open = false;
        }
        Ok(())
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        let prepared = SinkWriter::<T>::prepare_commit_deferred(self, barrier)?;
        if let Some(deferred) = prepared.deferred {
            deferred()?;
        }
        Ok(prepared.state)
    }

    fn prepare_commit_deferred(&mut self, barrier: Barrier) -> Result<PreparedCommit, UserError> {
        self.check_broken()?;
        let checkpoint_id = barrier.id;
        let commit_first = if !self.rows.is_empty() && !self.may_write_early() {
            // Upsert with transactions still prepared: their snapshots ended
            // without a commit (an intermediate savepoint, which is never
            // notified, or an aborted checkpoint, whose transaction must not
            // be rolled back: see `abort`; the coordinator starts a snapshot
            // only after the previous one ended). They hold the row locks the
            // rows of the same keys need, and only this writer could release
            // them. So the deferred prepare commits them first, ahead of their
            // checkpoint (after the earlier prepares, so they exist).
            // Upserts are idempotent, so if a failure restores an older
            // checkpoint the replay writes the same values again: the table
            // may run ahead, never count twice. (Kept although aborts are
            // notified now: an abort cannot release the locks safely.) They
            // stay pending here; committing them again later finds nothing.
            self.pending.iter().map(|p| p.name.clone()).collect()
        } else {
            Vec::new()
        };
        let open = self.data.as_ref().is_some_and(|c| c.open);
        let name = (open || !self.rows.is_empty())
            .then(|| names::transaction_name(&self.job, &self.uid, self.subtask, checkpoint_id));
        if let Some(name) = &name {
            self.pending.push(PendingTransaction {
                name: name.clone(),
                checkpoint: checkpoint_id,
            });
        }
        let state = encode_pending(&self.pending)?;
        if self.pending.is_empty() {
            // Nothing prepared and nothing waiting to be: nothing to order.
            return Ok(PreparedCommit::done(state));
        }
        // Even without a transaction of its own, a snapshot that names
        // pending transactions waits for the earlier prepares (its turn).
        let turn = self.next_turn;
        self.next_turn += 1;
        let deferred = DeferredPrepare {
            turn,
            turns: Arc::clone(&self.turns),
            settings: Arc::clone(&self.settings),
            table_sql: self.table.sql_name.clone(),
            full_sql: self.full_sql.clone(),
            connection: if name.is_some() {
                self.data.take()
            } else {
                None
            },
            rows: std::mem::take(&mut self.rows),
            // Freed on the upload thread: dropping a map of many keys takes
            // milliseconds, which would count in the pause.
            _keys: std::mem::take(&mut self.keys),
            commit_first,
            name,
            ran: false,
        };
        Ok(PreparedCommit {
            state,
            deferred: Some(Box::new(move || deferred.run().map_err(UserError::from))),
        })
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        self.check_broken()?;
        self.commit_up_to(checkpoint_id)?;
        Ok(())
    }

    /// Keeps the aborted checkpoint's prepared transaction: it holds rows of
    /// records the job will not read again (it does not rewind after an
    /// abort), so the next completed checkpoint, whose state names it too,
    /// commits it. No I/O.
    fn abort(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
        if let Some(kept) = self.pending.iter().find(|p| p.checkpoint == checkpoint_id) {
            tracing::debug!(
                transaction = %kept.name,
                "checkpoint {checkpoint_id} was aborted; its prepared transaction \
                 is committed with the next completed checkpoint"
            );
        }
        Ok(())
    }
}
