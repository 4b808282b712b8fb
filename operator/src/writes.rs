//! How the operator writes to the Kubernetes API: server-side apply of whole objects under its
//! own field manager (a field it stops applying is removed, so it never applies part of an
//! object it owns), creation that yields to a concurrent one, deletion that treats absence as
//! done, and Events.

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::HalyardCluster;

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "halyard-operator";

pub async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Creates `object`; one that appeared meanwhile (another round, a restarted operator) wins.
pub async fn create_or_adopt<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes `name`; already gone is done.
pub async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records an Event on the cluster; one that cannot be recorded is only logged.
pub async fn event(
    client: &Client,
    reporter: &Reporter,
    cluster: &HalyardCluster,
    warning: bool,
    reason: &str,
    note: String,
) {
    let recorder = Recorder::new(client.clone(), reporter.clone());
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::debug!(error = %e, "event not recorded");
    }
}
