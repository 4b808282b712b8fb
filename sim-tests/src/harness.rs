//! Runs scenarios seed by seed. Each seed is one deterministic run on a thread of its own; a
//! failing seed is reported with the command that replays it alone.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Log lines' time: the simulator's, since the run began.
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let elapsed = madsim::time::TimeHandle::try_current()
            .map(|t| t.elapsed().as_millis())
            .unwrap_or_default();
        write!(w, "{elapsed:>6} ms")
    }
}

/// Runs `scenario` under the simulator seeded with `seed`; returns its event log.
pub fn run_seed<F, Fut>(seed: u64, scenario: F) -> String
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = String> + 'static,
{
    // Thread-local state (hash seeds, generators, clock skews) must not carry over from one
    // run to the next, or a seed would not replay.
    let run = std::thread::spawn(move || {
        // `SIM_TRACE=halyard_node::cluster=debug` and the like: what the nodes log, on
        // the simulator's clock.
        if let Ok(filter) = std::env::var("SIM_TRACE") {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            // `Targets`, unlike `EnvFilter`, keeps no hash maps: a run traced makes the same
            // random draws as one that is not.
            if let Ok(targets) = filter.parse::<tracing_subscriber::filter::Targets>() {
                let _ = tracing_subscriber::registry()
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_timer(SimulatedTime)
                            .with_writer(std::io::stderr),
                    )
                    .with(targets)
                    .try_init();
            }
        }
        let mut runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.set_time_limit(Duration::from_secs(900));
        runtime.block_on(scenario())
    });
    match run.join() {
        Ok(log) => log,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs the seeds `SIM_SEED..SIM_SEED + SIM_SEEDS` (default `1..1 + default_seeds`) of the
/// scenario the test `test` drives; writes each event log to `$SIM_LOG.<seed>` when set.
///
/// Each seed runs in a process of its own, exactly as the printed replay command runs it:
/// dependencies keep process-wide state (task id counters and the like) that would otherwise
/// carry from one run into the next and make a seed behave differently after others.
pub fn run_seeds<F, Fut>(test: &str, default_seeds: u64, scenario: F)
where
    F: Fn() -> Fut + Send + Clone + 'static,
    Fut: Future<Output = String> + 'static,
{
    let first = env_u64("SIM_SEED", 1);
    let count = env_u64("SIM_SEEDS", default_seeds);
    if std::env::var_os(CHILD).is_some() {
        for seed in first..first + count {
            let log = run_seed(seed, scenario.clone());
            if let Ok(path) = std::env::var("SIM_LOG") {
                let _ = std::fs::write(format!("{path}.{seed}"), log);
            }
        }
        return;
    }
    for seed in first..first + count {
        if let Err(output) = run_in_child(test, seed, std::env::var_os("SIM_LOG")) {
            panic!(
                "{output}\nseed {seed} failed; replay it alone with:\n  SIM_SEED={seed} SIM_SEEDS=1 scripts/sim.sh {test}"
            );
        }
    }
}

/// Set in a child process that runs seeds itself.
const CHILD: &str = "SIM_CHILD";

/// Runs one seed of `test` in a child process; on failure, what it printed.
fn run_in_child(test: &str, seed: u64, log: Option<std::ffi::OsString>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let mut command = std::process::Command::new(exe);
    command
        .args([
            "--exact",
            test,
            "--include-ignored",
            "--quiet",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("SIM_SEED", seed.to_string())
        .env("SIM_SEEDS", "1");
    match log {
        Some(log) => command.env("SIM_LOG", log),
        None => command.env_remove("SIM_LOG"),
    };
    let output = command
        .output()
        .map_err(|e| format!("cannot run the test binary: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let printed = String::from_utf8_lossy(&output.stderr);
    // The panic message and where it came from; the rest is the test harness's noise.
    let tail: Vec<&str> = printed.lines().rev().take(60).collect();
    Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// Replays each seed twice, each time in a process of its own as a user replaying it would,
/// and asserts that the two event logs are identical.
pub fn assert_replays_identically(test: &str, seeds: &[u64], scratch: &Path) {
    for seed in seeds {
        let mut logs = Vec::new();
        for attempt in 0..2 {
            let log = scratch.join(format!("{test}-{attempt}"));
            if let Err(output) = run_in_child(test, *seed, Some(log.clone().into_os_string())) {
                panic!("{output}\n{test}: seed {seed} failed when replayed");
            }
            let path = format!("{}.{seed}", log.display());
            match std::fs::read_to_string(&path) {
                Ok(text) => logs.push(text),
                Err(e) => panic!("{test}: seed {seed} left no event log at {path}: {e}"),
            }
        }
        assert!(
            logs[0] == logs[1],
            "{test}: seed {seed} is not deterministic: two runs differ"
        );
    }
}
