//! The seeds of every scenario. Each seed is one deterministic run; a failing seed is printed
//! with the command that replays it alone.
#![cfg(madsim)]

use halyard_sim_tests::harness::{assert_replays_identically, run_seeds};
use halyard_sim_tests::{
    broker_scenario, cluster_broker_scenario, jobs_scenario, operator_scenario, shadow_scenario,
    store_scenario,
};

const STORE: &str = "store_stays_linearizable_and_loses_nothing_under_faults";
const BROKER: &str = "broker_loses_no_acknowledged_message_across_restarts";
const CLUSTER: &str = "brokers_act_as_one_and_lose_no_acknowledged_message_under_faults";
const SHADOW: &str = "shadow_updates_are_never_lost_or_applied_twice_under_faults";
const JOBS: &str = "job_executions_end_once_and_rollouts_keep_their_rate_under_faults";
const OPERATOR: &str = "the_operator_scales_and_upgrades_real_nodes_losing_nothing";

#[test]
fn store_stays_linearizable_and_loses_nothing_under_faults() {
    run_seeds(STORE, 20, store_scenario::run);
}

#[test]
fn broker_loses_no_acknowledged_message_across_restarts() {
    run_seeds(BROKER, 10, broker_scenario::run);
}

#[test]
fn brokers_act_as_one_and_lose_no_acknowledged_message_under_faults() {
    run_seeds(CLUSTER, 10, cluster_broker_scenario::run);
}

#[test]
fn shadow_updates_are_never_lost_or_applied_twice_under_faults() {
    run_seeds(SHADOW, 10, shadow_scenario::run);
}

#[test]
fn job_executions_end_once_and_rollouts_keep_their_rate_under_faults() {
    run_seeds(JOBS, 4, jobs_scenario::run);
}

#[test]
fn the_operator_scales_and_upgrades_real_nodes_losing_nothing() {
    run_seeds(OPERATOR, 5, operator_scenario::run);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no scratch directory: {e}"),
    };
    assert_replays_identically(STORE, &[11, 12, 13], scratch.path());
    assert_replays_identically(BROKER, &[11, 12], scratch.path());
    assert_replays_identically(SHADOW, &[11], scratch.path());
    assert_replays_identically(JOBS, &[11], scratch.path());
    assert_replays_identically(OPERATOR, &[11], scratch.path());
}
