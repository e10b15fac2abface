//! [`PostgresSink`]: rows into a table, exactly once, by two-phase commit with
//! the database's own `PREPARE TRANSACTION` / `COMMIT PREPARED`.
//!
//! Each writer holds two connections: `data`, with the open transaction that
//! receives the rows since the last barrier, and `control`, which commits and
//! rolls back prepared transactions (`COMMIT PREPARED` cannot run inside a
//! transaction block, and the data connection may have one open).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use flowstate_runtime::checkpoint::OperatorListState;
use flowstate_runtime::{Barrier, Data, Sink, SinkWriter, SubtaskInfo, UserError};
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
    let elements = pending
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![OperatorListState {
        name: PENDING_STATE.into(),
        mode: RedistributionMode::Union,
        elements,
    }])
}

fn decode_pending(subtask: &SubtaskInfo) -> Result<Vec<PendingTransaction>, PostgresError> {
    let Some(elements) = subtask
        .restored
        .as_ref()
        .and_then(|r| r.list(PENDING_STATE))
    else {
        return Ok(Vec::new());
    };
    elements
        .iter()
        .map(|e| serde_json::from_slice(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PostgresError::DamagedState {
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
        let data = settings.connect()?;
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
            data,
            control,
            full_statement: None,
            rows: Vec::new(),
            keys: HashMap::new(),
            key_indexes,
            open: false,
            pending: Vec::new(),
            settings,
        }))
    }
}

/// One instance of the sink; see [`PostgresSink`].
struct PostgresWriter<T> {
    settings: Arc<Settings>,
    table: ResolvedTable,
    row: RowFn<T>,
    job: String,
    uid: String,
    subtask: u32,
    /// The connection with the open transaction.
    data: Client,
    /// The connection that commits and rolls back prepared transactions.
    control: Client,
    /// The `INSERT` of a full chunk of rows, prepared on `data` once.
    full_sql: String,
    full_statement: Option<Statement>,
    /// Rows since the last write into the open transaction.
    rows: Vec<Vec<SqlValue>>,
    /// Upsert mode: key values -> index in `rows` (the latest row per key wins).
    keys: HashMap<Vec<SqlValue>, usize>,
    key_indexes: Vec<usize>,
    /// `BEGIN` was sent on `data` and rows were written since.
    open: bool,
    /// Prepared, not yet committed, oldest first.
    pending: Vec<PendingTransaction>,
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

    /// Writes the buffered rows into the open transaction (opening it).
    fn flush(&mut self) -> Result<(), PostgresError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let settings = Arc::clone(&self.settings);
        if !self.open {
            self.data
                .batch_execute("BEGIN")
                .map_err(|e| settings.statement_error("BEGIN", &e))?;
            self.open = true;
        }
        let per_statement = settings.rows_per_statement();
        let rows = std::mem::take(&mut self.rows);
        self.keys.clear();
        for chunk in rows.chunks(per_statement) {
            let params: Vec<&(dyn ToSql + Sync)> = chunk
                .iter()
                .flat_map(|row| row.iter().map(|v| v as &(dyn ToSql + Sync)))
                .collect();
            let result = if chunk.len() == per_statement {
                let statement = match &self.full_statement {
                    Some(s) => s.clone(),
                    None => {
                        let s = self
                            .data
                            .prepare(&self.full_sql)
                            .map_err(|e| settings.statement_error("preparing the INSERT", &e))?;
                        self.full_statement = Some(s.clone());
                        s
                    }
                };
                self.data.execute(&statement, &params)
            } else {
                let sql = settings.insert_sql(&self.table.sql_name, chunk.len());
                self.data.execute(sql.as_str(), &params)
            };
            result.map_err(|e| settings.statement_error("INSERT", &e))?;
        }
        Ok(())
    }

    /// Commits the pending transactions of checkpoints up to `checkpoint`.
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
    /// writer's thread can issue.
    fn may_write_early(&self) -> bool {
        !self.upsert() || self.pending.is_empty()
    }
}

impl<T: Data> SinkWriter<T> for PostgresWriter<T> {
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<(), UserError> {
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
        // With checkpoints everything was committed by the final checkpoint;
        // without, this is the one commit.
        self.commit_up_to(u64::MAX)?;
        self.flush()?;
        if self.open {
            let settings = Arc::clone(&self.settings);
            self.data
                .batch_execute("COMMIT")
                .map_err(|e| settings.statement_error("COMMIT", &e))?;
            self.open = false;
        }
        Ok(())
    }

    fn prepare_commit(&mut self, barrier: Barrier) -> Result<Vec<OperatorListState>, UserError> {
        let checkpoint_id = barrier.id;
        if !self.rows.is_empty() && !self.may_write_early() {
            // Upsert with transactions still prepared: their snapshots ended
            // without a commit (an intermediate savepoint, which is never
            // notified, or an aborted checkpoint, whose transaction must not
            // be rolled back: see `abort`; the coordinator starts a snapshot
            // only after the previous one ended). They hold the row locks the
            // rows of the same keys need, and only this thread could release
            // them. So they are committed now, ahead of their checkpoint.
            // Upserts are idempotent, so if a failure restores an older
            // checkpoint the replay writes the same values again: the table
            // may run ahead, never count twice. (Kept although aborts are
            // notified now: an abort cannot release the locks safely.)
            self.commit_up_to(u64::MAX)?;
        }
        self.flush()?;
        if self.open {
            let name = names::transaction_name(&self.job, &self.uid, self.subtask, checkpoint_id);
            let settings = Arc::clone(&self.settings);
            self.data
                .batch_execute(&format!("PREPARE TRANSACTION {}", names::literal(&name)))
                .map_err(|e| {
                    settings.statement_error(&format!("PREPARE TRANSACTION '{name}'"), &e)
                })?;
            self.open = false;
            self.pending.push(PendingTransaction {
                name,
                checkpoint: checkpoint_id,
            });
        }
        encode_pending(&self.pending)
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), UserError> {
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
