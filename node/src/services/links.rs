//! The two-way links between records, each kept as a pair of index keys written in one
//! transaction: a thing and the principals (certificates) attached to it, and a policy and
//! the targets (certificates, thing groups) it is attached to. Whoever must know whether a
//! record is still linked before deleting it reads them here.

use halyard_raft::Op;

use super::error::Result;
use super::records::{Page, Records, encode_name};
use crate::store::keys;

/// Policies one certificate or group may have attached at most.
pub const MAX_POLICIES_PER_TARGET: usize = 10;

/// The writes that attach `principal` to `thing`.
pub fn attach_principal(thing: &str, principal: &str) -> [Op; 2] {
    [
        Op::put(
            keys::thing_principal(thing, principal),
            encode_name(principal),
        ),
        Op::put(keys::principal_thing(principal, thing), encode_name(thing)),
    ]
}

/// The writes that detach `principal` from `thing`.
pub fn detach_principal(thing: &str, principal: &str) -> [Op; 2] {
    [
        Op::delete(keys::thing_principal(thing, principal)),
        Op::delete(keys::principal_thing(principal, thing)),
    ]
}

/// Whether `principal` is attached to `thing`.
pub async fn principal_has_thing(records: &Records, principal: &str, thing: &str) -> Result<bool> {
    records
        .exists(&keys::principal_thing(principal, thing))
        .await
}

/// Up to `limit` of the things `principal` is attached to.
pub async fn things_of(records: &Records, principal: &str, limit: usize) -> Result<Vec<String>> {
    records
        .names(&keys::principal_things(principal), limit)
        .await
}

/// The thing `principal` is attached to, when it is attached to exactly one.
pub async fn sole_thing(records: &Records, principal: &str) -> Result<Option<String>> {
    let mut things = things_of(records, principal, 2).await?;
    Ok(match things.len() {
        1 => things.pop(),
        _ => None,
    })
}

/// Whether any principal is attached to `thing`.
pub async fn has_principals(records: &Records, thing: &str) -> Result<bool> {
    Ok(!records
        .names(&keys::thing_principals(thing), 1)
        .await?
        .is_empty())
}

/// The writes that attach `policy` to `target`.
pub fn attach_policy(policy: &str, target: &str) -> [Op; 2] {
    [
        Op::put(keys::policy_target(policy, target), encode_name(target)),
        Op::put(keys::target_policy(target, policy), encode_name(policy)),
    ]
}

/// The writes that detach `policy` from `target`.
pub fn detach_policy(policy: &str, target: &str) -> [Op; 2] {
    [
        Op::delete(keys::policy_target(policy, target)),
        Op::delete(keys::target_policy(target, policy)),
    ]
}

/// The names of the policies attached to `target`.
pub async fn policies_of(records: &Records, target: &str) -> Result<Vec<String>> {
    records
        .names(&keys::target_policies(target), MAX_POLICIES_PER_TARGET + 1)
        .await
}

/// Detaches every policy from `target`, which is being deleted.
pub async fn detach_all_policies(records: &Records, target: &str) -> Result<()> {
    let ops: Vec<Op> = policies_of(records, target)
        .await?
        .iter()
        .flat_map(|policy| detach_policy(policy, target))
        .collect();
    if !ops.is_empty() {
        records.txn(halyard_raft::Txn::new().and_then(ops)).await?;
    }
    Ok(())
}

/// A page of the targets `policy` is attached to; `principals_only` leaves out thing groups.
pub async fn targets_of(
    records: &Records,
    policy: &str,
    page: &Page,
    principals_only: bool,
) -> Result<(Vec<String>, Option<String>)> {
    page.collect(records, &keys::policy_targets(policy), |t: &String| {
        !principals_only || !t.contains(":thinggroup/")
    })
    .await
}
