//! Files read again while the node runs: certificates mounted from Kubernetes Secrets, which
//! the kubelet updates by swapping a symlink, so a read sees all old or all new files.

use std::time::Duration;

use tokio::sync::watch;

/// Calls `changed` each time `read` returns something other than it last did (read every
/// `check`), until `shutdown`. A read that fails (a file missing while it is replaced) is not a
/// change: the next successful one is compared with the last successful one.
pub async fn on_change<T: PartialEq>(
    read: impl Fn() -> Option<T>,
    check: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut changed: impl FnMut(),
) {
    let mut last = read();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let current = read();
        if current.is_none() || current == last {
            continue;
        }
        last = current;
        changed();
    }
}
