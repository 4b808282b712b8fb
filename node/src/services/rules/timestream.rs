//! AWS's `timestream` action, written to PostgreSQL (or TimescaleDB) at `rules.postgres_url`,
//! where self-hosted users keep their time series. A message becomes one row of
//! `"{databaseName}"."{tableName}"`: a `time` column, a text column per dimension, and a column
//! per top-level attribute of the rule's output (a measure), typed by its first value (bigint,
//! double precision, boolean, text, or jsonb for objects and arrays). Schemas, tables and
//! columns are made as they are first needed; an existing column keeps its type, and a value
//! that does not cast to it fails that message alone.
//!
//! Each action's worker writes what its queue holds in one multi-row INSERT per table; a
//! statement that fails is retried row by row, so that one bad message fails only itself, and
//! a lost connection is opened again and the batch retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use halyard_sql::{Environment, Message as SqlMessage, SqlVersion, Template};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::delivery::{Failure, OutboundJob, Work};

/// The most messages one INSERT writes.
const MAX_BATCH: usize = 500;
/// PostgreSQL takes at most 65,535 parameters in a statement.
const MAX_PARAMETERS: usize = 65_000;
const TRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most dimensions AWS's action takes.
const MAX_DIMENSIONS: usize = 128;

/// The action as created: where rows go, the dimensions' templates, and where the time comes
/// from.
#[derive(Debug, Clone)]
pub struct Timestream {
    pub database: String,
    pub table: String,
    pub dimensions: Vec<(String, Template)>,
    pub timestamp: Option<(Template, TimeUnit)>,
}

#[derive(Debug, Clone, Copy)]
pub enum TimeUnit {
    Seconds,
    Milliseconds,
    Microseconds,
    Nanoseconds,
}

impl TimeUnit {
    fn to_micros(self, value: i64) -> Option<i64> {
        match self {
            TimeUnit::Seconds => value.checked_mul(1_000_000),
            TimeUnit::Milliseconds => value.checked_mul(1_000),
            TimeUnit::Microseconds => Some(value),
            TimeUnit::Nanoseconds => Some(value / 1_000),
        }
    }
}

/// One message's row.
#[derive(Debug)]
pub struct Row {
    pub schema: String,
    pub table: String,
    /// Microseconds since the Unix epoch.
    pub time_micros: i64,
    pub cells: Vec<(String, Cell)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(String),
    Bool(bool),
    Text(String),
    Json(String),
}

impl Cell {
    /// The column type a new column gets for this value.
    fn column_type(&self) -> &'static str {
        match self {
            Cell::Int(_) => "bigint",
            Cell::Float(_) => "double precision",
            Cell::Bool(_) => "boolean",
            Cell::Json(_) => "jsonb",
            Cell::Null | Cell::Text(_) => "text",
        }
    }

    /// The value as PostgreSQL's text input for any column type takes it.
    fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Int(n) => Some(n.to_string()),
            Cell::Float(f) => Some(f.clone()),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Text(s) | Cell::Json(s) => Some(s.clone()),
        }
    }
}

impl Timestream {
    pub fn parse(body: &serde_json::Value, version: SqlVersion) -> Result<Timestream, String> {
        let name = |field: &str| -> Result<String, String> {
            body.get(field)
                .and_then(serde_json::Value::as_str)
                .filter(|v| !v.is_empty() && v.len() <= 256)
                .map(str::to_owned)
                .ok_or_else(|| format!("timestream: {field} is required (1 to 256 characters)"))
        };
        let database = name("databaseName")?;
        let table = name("tableName")?;
        let list = body
            .get("dimensions")
            .and_then(serde_json::Value::as_array)
            .filter(|d| !d.is_empty())
            .ok_or("timestream: dimensions is required (a list of name and value)")?;
        if list.len() > MAX_DIMENSIONS {
            return Err(format!("timestream: at most {MAX_DIMENSIONS} dimensions"));
        }
        let mut dimensions = Vec::with_capacity(list.len());
        for dimension in list {
            let key = dimension
                .get("name")
                .and_then(serde_json::Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or("timestream: every dimension needs a name")?;
            if key == "time" {
                return Err("timestream: a dimension cannot be named time".to_owned());
            }
            let value = dimension
                .get("value")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("timestream: dimension {key} needs a value"))?;
            let value = Template::compile(value, version)
                .map_err(|e| format!("timestream: dimension {key}: {e}"))?;
            dimensions.push((key.to_owned(), value));
        }
        let timestamp = match body.get("timestamp") {
            None | Some(serde_json::Value::Null) => None,
            Some(timestamp) => {
                let value = timestamp
                    .get("value")
                    .and_then(serde_json::Value::as_str)
                    .ok_or("timestamp: timestamp.value is required")?;
                let unit = match timestamp.get("unit").and_then(serde_json::Value::as_str) {
                    Some("SECONDS") => TimeUnit::Seconds,
                    None | Some("MILLISECONDS") => TimeUnit::Milliseconds,
                    Some("MICROSECONDS") => TimeUnit::Microseconds,
                    Some("NANOSECONDS") => TimeUnit::Nanoseconds,
                    Some(other) => {
                        return Err(format!(
                            "timestream: timestamp.unit {other} is not one of SECONDS, MILLISECONDS, MICROSECONDS, NANOSECONDS"
                        ));
                    }
                };
                let value = Template::compile(value, version)
                    .map_err(|e| format!("timestream: timestamp.value: {e}"))?;
                Some((value, unit))
            }
        };
        Ok(Timestream {
            database,
            table,
            dimensions,
            timestamp,
        })
    }

    /// The row `payload` (the rule's output) makes for `message`, or what is wrong with it.
    pub fn row(
        &self,
        message: &SqlMessage<'_>,
        env: &dyn Environment,
        payload: &[u8],
    ) -> Result<Row, String> {
        let Ok(serde_json::Value::Object(output)) = serde_json::from_slice(payload) else {
            return Err("the rule's output is not a JSON object".to_owned());
        };
        let time_micros = match &self.timestamp {
            None => i64::try_from(crate::clock::epoch_micros()).unwrap_or(i64::MAX),
            Some((template, unit)) => {
                let text = template.render(message, env);
                text.trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(|v| unit.to_micros(v))
                    .ok_or_else(|| format!("the timestamp '{text}' is not a whole number"))?
            }
        };
        let mut cells = Vec::with_capacity(self.dimensions.len() + output.len());
        for (name, template) in &self.dimensions {
            cells.push((name.clone(), Cell::Text(template.render(message, env))));
        }
        for (name, value) in output {
            if name == "time" {
                return Err("a measure cannot be named time".to_owned());
            }
            if self.dimensions.iter().any(|(d, _)| *d == name) {
                return Err(format!("{name} is both a dimension and a measure"));
            }
            let cell = match value {
                serde_json::Value::Null => Cell::Null,
                serde_json::Value::Bool(b) => Cell::Bool(b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Cell::Int(i),
                    None => Cell::Float(n.to_string()),
                },
                serde_json::Value::String(s) => Cell::Text(s),
                other => Cell::Json(other.to_string()),
            };
            cells.push((name, cell));
        }
        Ok(Row {
            schema: self.database.clone(),
            table: self.table.clone(),
            time_micros,
            cells,
        })
    }
}

/// `"name"`, with quotes inside doubled.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table's name and its columns' types, as this worker last read them.
type Columns = HashMap<String, String>;

/// The worker of one timestream action: takes what its queue holds, writes it, reports.
pub async fn worker(
    mut receiver: mpsc::Receiver<OutboundJob>,
    depth: prometheus::IntGauge,
    config: Arc<tokio_postgres::Config>,
) {
    let mut writer = Writer {
        config,
        client: None,
        tables: HashMap::new(),
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        depth.sub(i64::try_from(batch.len()).unwrap_or(i64::MAX));
        let jobs = std::mem::take(&mut batch);
        writer.write(jobs).await;
    }
}

struct Writer {
    config: Arc<tokio_postgres::Config>,
    client: Option<tokio_postgres::Client>,
    tables: HashMap<(String, String), Columns>,
}

/// Why a write did not happen: the database refused it (retrying the same rows will not
/// help), or the connection failed (it may, once connected again).
#[derive(Clone)]
enum WriteError {
    Refused(String),
    Connection(String),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        let message = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        };
        if e.as_db_error().is_some() && !e.is_closed() {
            WriteError::Refused(message)
        } else {
            WriteError::Connection(message)
        }
    }
}

impl Writer {
    /// Writes `jobs` a table at a time, and reports each job's outcome.
    async fn write(&mut self, jobs: Vec<OutboundJob>) {
        let mut by_table: HashMap<(String, String), Vec<OutboundJob>> = HashMap::new();
        for job in jobs {
            match &job.work {
                Work::Row(row) => by_table
                    .entry((row.schema.clone(), row.table.clone()))
                    .or_default()
                    .push(job),
                Work::Http { .. } => report(
                    &job,
                    Err(WriteError::Refused(
                        "not a row of the timestream action".to_owned(),
                    )),
                ),
            }
        }
        for (table, jobs) in by_table {
            for chunk in chunks(jobs) {
                self.write_table(&table, chunk).await;
            }
        }
    }

    async fn write_table(&mut self, table: &(String, String), jobs: Vec<OutboundJob>) {
        let rows: Vec<&Row> = jobs.iter().filter_map(|j| j.work.row()).collect();
        let outcome = self.with_retries(table, &rows).await;
        match outcome {
            Ok(()) => {
                for job in &jobs {
                    job.report.outcome(&job.action, Ok(()));
                }
            }
            Err(WriteError::Refused(_)) if jobs.len() > 1 => {
                // One bad row fails the statement: each row alone, so that only it fails.
                for job in &jobs {
                    let rows: Vec<&Row> = job.work.row().into_iter().collect();
                    let outcome = self.with_retries(table, &rows).await;
                    report(job, outcome);
                }
            }
            Err(e) => {
                for job in &jobs {
                    report(job, Err(e.clone()));
                }
            }
        }
    }

    async fn with_retries(
        &mut self,
        table: &(String, String),
        rows: &[&Row],
    ) -> Result<(), WriteError> {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.insert(table, rows).await {
                Ok(()) => return Ok(()),
                Err(WriteError::Connection(message)) if tries < TRIES => {
                    tracing::debug!(error = %message, "PostgreSQL write failed; connecting again");
                    self.client = None;
                    self.tables.clear();
                }
                Err(e) => {
                    if matches!(e, WriteError::Connection(_)) {
                        self.client = None;
                        self.tables.clear();
                    } else {
                        // A refused write may come from a column changed behind our back.
                        self.tables.remove(table);
                    }
                    return Err(e);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    async fn connect(&mut self) -> Result<&tokio_postgres::Client, WriteError> {
        if self
            .client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            let connecting = self.config.connect(tokio_postgres::NoTls);
            let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .map_err(|_| {
                WriteError::Connection("connecting to PostgreSQL timed out".to_owned())
            })??;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| WriteError::Connection("not connected".to_owned()))
    }

    /// Makes the table and the columns `rows` need, then inserts them in one statement.
    async fn insert(&mut self, table: &(String, String), rows: &[&Row]) -> Result<(), WriteError> {
        let mut wanted: Vec<(&str, &'static str)> = Vec::new();
        for row in rows {
            for (name, cell) in &row.cells {
                if !wanted.iter().any(|(n, _)| n == name) {
                    wanted.push((name, cell.column_type()));
                }
            }
        }
        let columns = self.columns(table, &wanted).await?;
        let client = self.connect().await?;
        let qualified = format!("{}.{}", quote(&table.0), quote(&table.1));
        let mut statement = format!("INSERT INTO {qualified} (\"time\"");
        for (name, _) in &wanted {
            statement.push_str(", ");
            statement.push_str(&quote(name));
        }
        statement.push_str(") VALUES ");
        let mut parameters: Vec<Option<String>> =
            Vec::with_capacity(rows.len() * (wanted.len() + 1));
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                statement.push_str(", ");
            }
            parameters.push(Some(row.time_micros.to_string()));
            statement.push_str(&format!(
                "('epoch'::timestamptz + ${}::text::bigint * interval '1 microsecond'",
                parameters.len()
            ));
            for (name, _) in &wanted {
                let value = row
                    .cells
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, cell)| cell.text());
                parameters.push(value);
                let column_type = columns.get(*name).map_or("text", String::as_str);
                statement.push_str(&format!(", ${}::text::{column_type}", parameters.len()));
            }
            statement.push(')');
        }
        let refs: Vec<&(dyn ToSql + Sync)> = parameters
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();
        client.execute(statement.as_str(), &refs).await?;
        Ok(())
    }

    /// The table's columns' types, after making the schema, the table and any of `wanted`
    /// it lacks.
    async fn columns(
        &mut self,
        table: &(String, String),
        wanted: &[(&str, &'static str)],
    ) -> Result<Columns, WriteError> {
        if let Some(known) = self.tables.get(table)
            && wanted.iter().all(|(name, _)| known.contains_key(*name))
        {
            return Ok(known.clone());
        }
        let client = self.connect().await?;
        let qualified = format!("{}.{}", quote(&table.0), quote(&table.1));
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {qualified} (\"time\" timestamptz NOT NULL)",
                quote(&table.0)
            ))
            .await?;
        let mut known = read_columns(client, &qualified).await?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(name, _)| !known.contains_key(*name))
            .map(|(name, column_type)| {
                format!("ADD COLUMN IF NOT EXISTS {} {column_type}", quote(name))
            })
            .collect();
        if !missing.is_empty() {
            client
                .batch_execute(&format!("ALTER TABLE {qualified} {}", missing.join(", ")))
                .await?;
            known = read_columns(client, &qualified).await?;
        }
        self.tables.insert(table.clone(), known.clone());
        Ok(known)
    }
}

async fn read_columns(
    client: &tokio_postgres::Client,
    qualified: &str,
) -> Result<Columns, WriteError> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&qualified],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

fn report(job: &OutboundJob, outcome: Result<(), WriteError>) {
    let outcome = outcome.map_err(|e| Failure {
        action: job.action.clone(),
        resource: job.resource.clone(),
        message: match e {
            WriteError::Refused(m) => format!("PostgreSQL refused the row: {m}"),
            WriteError::Connection(m) => format!("PostgreSQL: {m}"),
        },
    });
    job.report.outcome(&job.action, outcome);
}

/// Splits `jobs` so that no statement has more parameters than PostgreSQL takes.
fn chunks(jobs: Vec<OutboundJob>) -> Vec<Vec<OutboundJob>> {
    // Every row of a statement has a parameter for each column any of them has.
    let mut names = std::collections::HashSet::new();
    for row in jobs.iter().filter_map(|j| j.work.row()) {
        names.extend(row.cells.iter().map(|(name, _)| name.as_str()));
    }
    let per_statement = (MAX_PARAMETERS / (names.len() + 1)).max(1);
    let mut out = Vec::new();
    let mut current = Vec::new();
    for job in jobs {
        current.push(job);
        if current.len() == per_statement {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
