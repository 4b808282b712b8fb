//! The reconcile loop against a fake API server (kube's client over `tower_test`'s mock
//! service) and faked nodes: the exact writes each round makes when a cluster is created,
//! scaled 3 -> 5 -> 3, upgraded, paused, and when its peer certificate nears its end. A
//! simulated StatefulSet controller makes and removes pods by ordinal between rounds, and the
//! faked nodes keep a store's membership as the real ones do.
// A test harness: a broken fake is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use halyard_operator::controller::{Context, backoff, reconcile};
use halyard_operator::crd::{HalyardCluster, HalyardClusterSpec};
use halyard_operator::metrics::Metrics;
use halyard_operator::nodes::{
    AdminError, DrainReport, Endpoint, MemberReport, NodeAdmin, PeerTlsReport, ServerTlsReport,
    StoreStatus, TlsReport,
};
use halyard_operator::rotation::fingerprints;
use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};

const NS: &str = "iot";
const NAME: &str = "hc";
const START: i64 = 1_800_000_000;

thread_local! {
    /// The test's wall clock, which the controller reads; each test runs on a thread of its
    /// own (a current-thread runtime), so each has its own clock.
    static NOW: Cell<i64> = const { Cell::new(START) };
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(NOW.get()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn advance(seconds: i64) {
    NOW.set(NOW.get() + seconds);
}

/// Objects by their URL path without the query, as the API server keeps them.
#[derive(Default)]
struct ApiServer {
    objects: BTreeMap<String, Value>,
    /// Every create, patch and delete, as `METHOD path`; events aside.
    writes: Vec<String>,
    version: u64,
}

impl ApiServer {
    fn handle(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value) {
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        if path.contains("/events") {
            return (201, body);
        }
        if method != "GET" {
            self.writes.push(format!("{method} {path}"));
        }
        self.version += 1;
        let version = self.version.to_string();
        match method {
            "GET" => match self.objects.get(path) {
                Some(object) => (200, object.clone()),
                None if is_collection(path) => {
                    let prefix = format!("{path}/");
                    let items: Vec<Value> = self
                        .objects
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                        .map(|(_, v)| v.clone())
                        .collect();
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items}),
                    )
                }
                None => not_found(path),
            },
            "POST" => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let key = format!("{path}/{name}");
                if self.objects.contains_key(&key) {
                    return (409, status(409, "AlreadyExists"));
                }
                let mut object = body;
                object["metadata"]["resourceVersion"] = json!(version);
                self.objects.insert(key, object.clone());
                (201, object)
            }
            "PATCH" => {
                let (key, subresource) = match path.strip_suffix("/status") {
                    Some(parent) => (parent.to_owned(), true),
                    None => (path.to_owned(), false),
                };
                let mut object = self
                    .objects
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| json!({"metadata": {}}));
                if content_type.contains("json-patch") {
                    json_patch(&mut object, &body);
                } else if subresource {
                    object["status"] = body["status"].clone();
                } else {
                    // Server-side apply by the one manager there is: what it applies now is
                    // the object; a field it no longer applies is gone.
                    let kept = object.clone();
                    object = body;
                    for field in ["uid", "finalizers", "generation", "annotations"] {
                        if !kept["metadata"][field].is_null() && object["metadata"][field].is_null()
                        {
                            object["metadata"][field] = kept["metadata"][field].clone();
                        }
                    }
                    if !kept["status"].is_null() {
                        object["status"] = kept["status"].clone();
                    }
                }
                object["metadata"]["resourceVersion"] = json!(version);
                self.objects.insert(key, object.clone());
                (200, object)
            }
            "DELETE" => match self.objects.remove(path) {
                Some(object) => (200, object),
                None => not_found(path),
            },
            _ => (405, status(405, "MethodNotAllowed")),
        }
    }

    fn get(&self, path: &str) -> Option<&Value> {
        self.objects.get(path)
    }

    fn take_writes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.writes)
    }
}

/// Secret data as the API server serves it (base64, standard alphabet).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn is_collection(path: &str) -> bool {
    path.ends_with("/pods") || path.ends_with("/persistentvolumeclaims")
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

fn not_found(path: &str) -> (u16, Value) {
    (
        404,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
}

/// The JSON Patch kube's finalizer helper sends: `test`s, and an `add` of the finalizers.
fn json_patch(target: &mut Value, ops: &Value) {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        match (op["op"].as_str(), path) {
            (Some("add"), "/metadata/finalizers") => {
                target["metadata"]["finalizers"] = op["value"].clone()
            }
            (Some("add"), "/metadata/finalizers/-") => {
                if !target["metadata"]["finalizers"].is_array() {
                    target["metadata"]["finalizers"] = json!([]);
                }
                if let Some(list) = target["metadata"]["finalizers"].as_array_mut() {
                    list.push(op["value"].clone());
                }
            }
            _ => {}
        }
    }
}

/// The nodes of the cluster as the operator's admin calls see them: a store whose members,
/// leader and drains follow those calls and the pods that run.
#[derive(Default)]
struct Nodes {
    /// Node id -> voter.
    members: BTreeMap<u64, bool>,
    leader: Option<u64>,
    draining: BTreeSet<u64>,
    /// What each node has loaded of the peer Secret: its certificate and trusted CAs.
    loaded: BTreeMap<u64, (String, Vec<String>)>,
    /// The fingerprint of the server certificate each node presents, from the server Secret.
    served: BTreeMap<u64, String>,
    calls: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeAdmin(Arc<Mutex<Nodes>>);

fn node_of(endpoint: &Endpoint) -> u64 {
    // http://hc-<ordinal>.hc-peers.iot.svc:9090
    let host = endpoint.base.trim_start_matches("http://");
    let pod = host.split('.').next().unwrap_or_default();
    pod.rsplit('-')
        .next()
        .and_then(|o| o.parse::<u64>().ok())
        .map_or(0, |o| o + 1)
}

impl NodeAdmin for FakeAdmin {
    async fn store_status(&self, node: &Endpoint) -> Result<StoreStatus, AdminError> {
        let nodes = self.0.lock();
        let id = node_of(node);
        Ok(StoreStatus {
            id,
            role: if nodes.leader == Some(id) {
                "Leader"
            } else {
                "Follower"
            }
            .into(),
            term: 3,
            leader: nodes.leader,
            members: nodes
                .members
                .iter()
                .map(|(id, voter)| MemberReport {
                    id: *id,
                    voter: *voter,
                    lag: Some(0),
                })
                .collect(),
        })
    }

    async fn drain_status(&self, node: &Endpoint) -> Result<DrainReport, AdminError> {
        let nodes = self.0.lock();
        let draining = nodes.draining.contains(&node_of(node));
        Ok(DrainReport {
            draining,
            // Drains end at once here: the operator only waits for them.
            done: draining
                .then(|| json!({"clientsSentAway": 0, "sessionsHandedOver": 0, "sessionsLeft": 0})),
            connections: 0,
        })
    }

    async fn tls(&self, node: &Endpoint) -> Result<TlsReport, AdminError> {
        let nodes = self.0.lock();
        Ok(TlsReport {
            peer: nodes
                .loaded
                .get(&node_of(node))
                .map(|(certificate, trusted)| PeerTlsReport {
                    certificate_sha256: certificate.clone(),
                    not_after: 0,
                    trusted_ca_sha256: trusted.clone(),
                }),
            server: nodes
                .served
                .get(&node_of(node))
                .map(|certificate| ServerTlsReport {
                    certificate_sha256: certificate.clone(),
                    not_after: 0,
                }),
        })
    }

    async fn start_drain(&self, node: &Endpoint) -> Result<(), AdminError> {
        let mut nodes = self.0.lock();
        let id = node_of(node);
        nodes.calls.push(format!("drain {id}"));
        nodes.draining.insert(id);
        Ok(())
    }

    async fn promote(&self, leader: &Endpoint, id: u64) -> Result<(), AdminError> {
        let mut nodes = self.0.lock();
        nodes
            .calls
            .push(format!("promote {id} via {}", node_of(leader)));
        nodes.members.insert(id, true);
        Ok(())
    }

    async fn demote(&self, leader: &Endpoint, id: u64) -> Result<(), AdminError> {
        let mut nodes = self.0.lock();
        nodes
            .calls
            .push(format!("demote {id} via {}", node_of(leader)));
        nodes.members.insert(id, false);
        Ok(())
    }

    async fn remove_member(&self, leader: &Endpoint, id: u64) -> Result<(), AdminError> {
        let mut nodes = self.0.lock();
        nodes
            .calls
            .push(format!("remove {id} via {}", node_of(leader)));
        nodes.members.remove(&id);
        Ok(())
    }

    async fn transfer_leader(&self, leader: &Endpoint, to: u64) -> Result<(), AdminError> {
        let mut nodes = self.0.lock();
        nodes
            .calls
            .push(format!("transfer leadership {} -> {to}", node_of(leader)));
        nodes.leader = Some(to);
        Ok(())
    }
}

struct Harness {
    api: Arc<Mutex<ApiServer>>,
    nodes: FakeAdmin,
    ctx: Arc<Context<FakeAdmin>>,
}

const CLUSTER_PATH: &str = "/apis/halyard.io/v1alpha1/namespaces/iot/halyardclusters/hc";
const STS_PATH: &str = "/apis/apps/v1/namespaces/iot/statefulsets/hc";
const PODS_PATH: &str = "/api/v1/namespaces/iot/pods";

impl Harness {
    fn new(spec: Value) -> Harness {
        let api = Arc::new(Mutex::new(ApiServer::default()));
        api.lock().objects.insert(
            CLUSTER_PATH.to_owned(),
            json!({
                "apiVersion": "halyard.io/v1alpha1",
                "kind": "HalyardCluster",
                "metadata": {"name": NAME, "namespace": NS, "uid": "7d1f3a52-0d4c-4b8e-9b61-3f2a1c0e5d77", "generation": 1, "resourceVersion": "1"},
                "spec": spec,
            }),
        );
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let served = Arc::clone(&api);
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let content_type = request
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let (code, answer) = served.lock().handle(&method, &path, &content_type, &body);
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                    .expect("a response builds");
                respond.send_response(response);
            }
        });
        let client = kube::Client::new(service, NS);
        let nodes = FakeAdmin::default();
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics register");
        let mut ctx = Context::new(client, nodes.clone(), metrics);
        ctx.now = now;
        Harness {
            api,
            nodes,
            ctx: Arc::new(ctx),
        }
    }

    fn cluster(&self) -> HalyardCluster {
        let object = self
            .api
            .lock()
            .get(CLUSTER_PATH)
            .cloned()
            .expect("the cluster exists");
        serde_json::from_value(object).expect("the cluster parses")
    }

    fn edit(&self, change: impl FnOnce(&mut HalyardClusterSpec)) {
        let mut cluster = self.cluster();
        change(&mut cluster.spec);
        let mut api = self.api.lock();
        let object = api
            .objects
            .get_mut(CLUSTER_PATH)
            .expect("the cluster exists");
        object["spec"] = serde_json::to_value(&cluster.spec).expect("the spec serializes");
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        object["metadata"]["generation"] = json!(generation);
    }

    /// One reconcile round; returns its writes to the API server and its calls to the nodes.
    async fn round(&self) -> (Vec<String>, Vec<String>) {
        advance(60);
        if let Err(e) = reconcile(Arc::new(self.cluster()), Arc::clone(&self.ctx)).await {
            panic!("reconcile failed: {e}");
        }
        let writes = self.api.lock().take_writes();
        let calls = std::mem::take(&mut self.nodes.0.lock().calls);
        self.statefulset_controller();
        (writes, calls)
    }

    /// What Kubernetes does between rounds: the StatefulSet controller makes the pods
    /// `0..replicas` that are missing (from the template's image and annotations) and removes
    /// those above, and
    /// a new node joins the store as a learner (node 1 forms it).
    fn statefulset_controller(&self) {
        let mut api = self.api.lock();
        let Some(sts) = api.get(STS_PATH).cloned() else {
            return;
        };
        // Each running node has loaded the mounted peer Secret as it is now.
        let secret = api.get(&format!("{SECRETS}/hc-peer-tls")).cloned();
        if let Some(secret) = secret {
            let field = |key: &str| {
                let raw = secret["data"][key].as_str().unwrap_or_default();
                String::from_utf8(base64_decode(raw)).unwrap_or_default()
            };
            let certificate = fingerprints(&field("tls.crt")).unwrap().remove(0);
            let trusted = fingerprints(&field("ca.crt")).unwrap();
            let mut nodes = self.nodes.0.lock();
            let running: Vec<u64> = nodes.members.keys().copied().collect();
            for id in running {
                nodes
                    .loaded
                    .insert(id, (certificate.clone(), trusted.clone()));
            }
        }
        if let Some(secret) = api.get(&format!("{SECRETS}/hc-server-tls")).cloned() {
            let raw = secret["data"]["tls.crt"].as_str().unwrap_or_default();
            let pem = String::from_utf8(base64_decode(raw)).unwrap_or_default();
            let certificate = fingerprints(&pem).unwrap().remove(0);
            let mut nodes = self.nodes.0.lock();
            let running: Vec<u64> = nodes.members.keys().copied().collect();
            for id in running {
                nodes.served.insert(id, certificate.clone());
            }
        }
        let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(0);
        let image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let annotations = sts["spec"]["template"]["metadata"]["annotations"].clone();
        let mut nodes = self.nodes.0.lock();
        let existing: Vec<String> = api
            .objects
            .keys()
            .filter(|k| k.starts_with(&format!("{PODS_PATH}/")))
            .cloned()
            .collect();
        for key in existing {
            let ordinal: u64 = key
                .rsplit('-')
                .next()
                .and_then(|o| o.parse().ok())
                .unwrap_or(u64::MAX);
            if ordinal >= replicas {
                api.objects.remove(&key);
            }
        }
        for ordinal in 0..replicas {
            let key = format!("{PODS_PATH}/{NAME}-{ordinal}");
            if api.objects.contains_key(&key) {
                continue;
            }
            let started = now();
            api.objects.insert(key, json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{NAME}-{ordinal}"), "namespace": NS, "labels": {"app.kubernetes.io/name": "halyard", "app.kubernetes.io/instance": NAME}, "annotations": annotations},
                "spec": {"containers": [{"name": "halyard", "image": image}]},
                "status": {
                    "startTime": started.to_string(),
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": "halyard", "image": image, "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}],
                },
            }));
            let id = ordinal + 1;
            nodes.draining.remove(&id);
            if nodes.members.is_empty() {
                nodes.members.insert(id, true);
                nodes.leader = Some(id);
            } else {
                nodes.members.entry(id).or_insert(false);
            }
        }
    }

    fn voters(&self) -> Vec<u64> {
        self.nodes
            .0
            .lock()
            .members
            .iter()
            .filter(|(_, v)| **v)
            .map(|(id, _)| *id)
            .collect()
    }

    fn status(&self) -> Value {
        self.api
            .lock()
            .get(CLUSTER_PATH)
            .map(|c| c["status"].clone())
            .unwrap_or(Value::Null)
    }

    fn condition(&self, type_: &str) -> (String, String) {
        let status = self.status();
        let found = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap_or(Value::Null);
        (
            found["status"].as_str().unwrap_or_default().to_owned(),
            found["reason"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Rounds until the planner says Done (at most `limit`), with every round's writes and calls.
    async fn settle(&self, limit: usize) -> Vec<(Vec<String>, Vec<String>)> {
        let mut rounds = Vec::new();
        for _ in 0..limit {
            let round = self.round().await;
            rounds.push(round);
            if self.status()["step"] == "Done" {
                return rounds;
            }
        }
        panic!("not settled after {limit} rounds: {}", self.status());
    }
}

fn spec(nodes: u32, version: &str) -> Value {
    json!({"version": version, "nodes": nodes, "voters": 3, "upgrade": {"minPodAgeSeconds": 30, "maxRaftLag": 10}})
}

const SECRETS: &str = "/api/v1/namespaces/iot/secrets";

/// The objects every round applies, in order.
fn applied() -> Vec<String> {
    [
        "PATCH /api/v1/namespaces/iot/configmaps/hc-config",
        "PATCH /api/v1/namespaces/iot/services/hc-peers",
        "PATCH /api/v1/namespaces/iot/services/hc",
        "PATCH /apis/policy/v1/namespaces/iot/poddisruptionbudgets/hc",
        "DELETE /apis/monitoring.coreos.com/v1/namespaces/iot/servicemonitors/hc",
        "PATCH /apis/apps/v1/namespaces/iot/statefulsets/hc",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn with(mut writes: Vec<String>, more: &[&str]) -> Vec<String> {
    writes.extend(more.iter().map(|w| (*w).to_owned()));
    writes
}

#[tokio::test]
async fn a_new_cluster_gets_its_objects_forms_from_node_one_and_promotes_two_learners() {
    let h = Harness::new(spec(3, "1.0.0"));
    // The first round only adds the finalizer; the change it makes starts the next.
    let (writes, _) = h.round().await;
    assert_eq!(writes, [format!("PATCH {CLUSTER_PATH}")]);
    let finalizers = h.cluster().metadata.finalizers.unwrap_or_default();
    assert_eq!(finalizers, ["halyard.io/cleanup"]);
    let (writes, calls) = h.round().await;
    let mut first = vec![
        format!("POST {SECRETS}"),
        format!("POST {SECRETS}"),
        format!("PATCH {SECRETS}/hc-peer-tls"),
    ];
    first.extend(applied());
    first.push(format!("PATCH {CLUSTER_PATH}/status"));
    assert_eq!(writes, first);
    assert!(calls.is_empty(), "{calls:?}");
    let sts = h
        .api
        .lock()
        .get(STS_PATH)
        .cloned()
        .expect("the StatefulSet exists");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    let config = h
        .api
        .lock()
        .get("/api/v1/namespaces/iot/configmaps/hc-config")
        .cloned()
        .expect("the ConfigMap exists");
    let toml = config["data"]["halyard.toml"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        toml.contains("initial_members = \"1=hc-0.hc-peers.iot.svc:7000\""),
        "{toml}"
    );
    assert!(toml.contains("join_as = \"learner\""), "{toml}");

    // The pods are up: node 1 formed the store, 2 and 3 joined it as learners.
    let rounds = h.settle(10).await;
    let calls: Vec<String> = rounds.iter().flat_map(|(_, c)| c.clone()).collect();
    assert_eq!(calls, ["promote 2 via 1", "promote 3 via 1"]);
    assert_eq!(h.voters(), [1, 2, 3]);
    assert_eq!(
        h.condition("Available"),
        ("True".into(), "QuorumReady".into())
    );
    assert_eq!(
        h.condition("Progressing"),
        ("False".into(), "Reconciled".into())
    );
    assert_eq!(h.status()["formed"], true);
    // Once formed, no node forms a store again, whatever its volume holds.
    let config = h
        .api
        .lock()
        .get("/api/v1/namespaces/iot/configmaps/hc-config")
        .cloned()
        .expect("the ConfigMap exists");
    assert!(
        !config["data"]["halyard.toml"]
            .as_str()
            .unwrap_or_default()
            .contains("initial_members")
    );
    // A settled round only applies the owned objects again.
    let (writes, calls) = h.round().await;
    assert_eq!(writes, applied());
    assert!(calls.is_empty());
}

#[tokio::test]
async fn scaling_three_to_five_and_back_drains_and_removes_the_highest_first() {
    let h = Harness::new(spec(3, "1.0.0"));
    h.settle(10).await;
    h.edit(|s| s.nodes = 5);
    let (writes, calls) = h.round().await;
    assert_eq!(
        writes,
        with(
            applied(),
            &[
                "DELETE /api/v1/namespaces/iot/persistentvolumeclaims/data-hc-3",
                "DELETE /api/v1/namespaces/iot/persistentvolumeclaims/data-hc-4",
                "PATCH /apis/apps/v1/namespaces/iot/statefulsets/hc",
                "PATCH /apis/halyard.io/v1alpha1/namespaces/iot/halyardclusters/hc/status",
            ]
        )
    );
    assert!(calls.is_empty());
    h.settle(10).await;
    // Five nodes, three voters: the new ones serve clients as learners.
    assert_eq!(h.voters(), [1, 2, 3]);
    assert_eq!(h.nodes.0.lock().members.len(), 5);

    h.edit(|s| s.nodes = 3);
    let rounds = h.settle(20).await;
    let calls: Vec<String> = rounds.iter().flat_map(|(_, c)| c.clone()).collect();
    assert_eq!(
        calls,
        ["drain 5", "remove 5 via 1", "drain 4", "remove 4 via 1"]
    );
    let scaled: Vec<String> = rounds
        .iter()
        .flat_map(|(w, _)| w.clone())
        .filter(|w| w.starts_with("PATCH /apis/apps"))
        .collect();
    // Applied each round, and twice when a round scales (4, then 3).
    assert_eq!(scaled.len(), rounds.len() + 2);
    let replicas = h
        .api
        .lock()
        .get(STS_PATH)
        .map(|s| s["spec"]["replicas"].clone());
    assert_eq!(replicas, Some(json!(3)));
    assert_eq!(
        h.nodes.0.lock().members.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn an_upgrade_drains_and_replaces_one_pod_at_a_time_and_the_leader_last() {
    let h = Harness::new(spec(3, "1.0.0"));
    h.settle(10).await;
    h.edit(|s| s.version = "1.1.0".into());
    let rounds = h.settle(30).await;
    let calls: Vec<String> = rounds.iter().flat_map(|(_, c)| c.clone()).collect();
    assert_eq!(
        calls,
        [
            "drain 3",
            "drain 2",
            "drain 1",
            "transfer leadership 1 -> 2"
        ]
    );
    let replaced: Vec<String> = rounds
        .iter()
        .flat_map(|(w, _)| w.clone())
        .filter(|w| w.starts_with("DELETE /api/v1/namespaces/iot/pods/"))
        .collect();
    assert_eq!(
        replaced,
        [
            "DELETE /api/v1/namespaces/iot/pods/hc-2",
            "DELETE /api/v1/namespaces/iot/pods/hc-1",
            "DELETE /api/v1/namespaces/iot/pods/hc-0",
        ]
    );
    let pods = h
        .api
        .lock()
        .objects
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{PODS_PATH}/")))
        .map(|(_, p)| p["spec"]["containers"][0]["image"].clone())
        .collect::<Vec<_>>();
    assert!(
        pods.iter()
            .all(|i| i == "ghcr.io/halyard-iot/halyard:1.1.0"),
        "{pods:?}"
    );
    assert_eq!(
        h.condition("Upgrading"),
        ("False".into(), "AtVersion".into())
    );
}

fn pod_deletions(rounds: &[(Vec<String>, Vec<String>)]) -> Vec<String> {
    rounds
        .iter()
        .flat_map(|(w, _)| w.clone())
        .filter(|w| w.starts_with("DELETE /api/v1/namespaces/iot/pods/"))
        .collect()
}

#[tokio::test]
async fn a_changed_configuration_restarts_every_pod_one_at_a_time_and_forming_restarts_none() {
    let h = Harness::new(spec(3, "1.0.0"));
    let formed = h.settle(10).await;
    assert_eq!(pod_deletions(&formed), Vec::<String>::new());
    assert_eq!(h.status()["formed"], true);

    h.edit(|s| s.config = Some("[mqtt]\nmax_inflight_messages = 64\n".into()));
    let first = h.round().await;
    assert_eq!(
        h.condition("Upgrading"),
        ("True".into(), "RollingRestart".into())
    );
    let mut rounds = vec![first];
    rounds.extend(h.settle(30).await);
    assert_eq!(
        pod_deletions(&rounds),
        [
            "DELETE /api/v1/namespaces/iot/pods/hc-2",
            "DELETE /api/v1/namespaces/iot/pods/hc-1",
            "DELETE /api/v1/namespaces/iot/pods/hc-0",
        ]
    );
    let config = h
        .api
        .lock()
        .get("/api/v1/namespaces/iot/configmaps/hc-config")
        .cloned();
    let config = config.map(|c| c["data"]["halyard.toml"].clone());
    assert!(
        config
            .as_ref()
            .and_then(|c| c.as_str())
            .is_some_and(|c| c.contains("max_inflight_messages = 64")),
        "{config:?}"
    );
    assert_eq!(
        h.condition("Upgrading"),
        ("False".into(), "AtVersion".into())
    );
    // Settled, nothing more rolls.
    let settled = h.round().await;
    assert_eq!(pod_deletions(&[settled]), Vec::<String>::new());
}

#[tokio::test]
async fn a_paused_cluster_is_left_alone() {
    let h = Harness::new(spec(3, "1.0.0"));
    h.settle(10).await;
    h.edit(|s| {
        s.paused = true;
        s.nodes = 5;
    });
    let (writes, calls) = h.round().await;
    assert_eq!(writes, [format!("PATCH {CLUSTER_PATH}/status")]);
    assert!(calls.is_empty());
    assert_eq!(
        h.condition("ReconciliationPaused"),
        ("True".into(), "Paused".into())
    );
    assert_eq!(
        h.api
            .lock()
            .get(STS_PATH)
            .map(|s| s["spec"]["replicas"].clone()),
        Some(json!(3))
    );
}

#[tokio::test]
async fn a_peer_certificate_near_its_end_is_reissued_in_place() {
    let h = Harness::new(spec(3, "1.0.0"));
    h.settle(10).await;
    let before = h
        .api
        .lock()
        .get(&format!("{SECRETS}/hc-peer-tls"))
        .map(|s| s["data"]["tls.crt"].clone());
    // 61 of the 90 days later: inside the 30 days before its end.
    advance(61 * 24 * 3600);
    let (writes, _) = h.round().await;
    assert_eq!(
        writes,
        with(vec![format!("PATCH {SECRETS}/hc-peer-tls")], &[])
            .into_iter()
            .chain(applied())
            .chain([format!("PATCH {CLUSTER_PATH}/status")])
            .collect::<Vec<_>>()
    );
    let after = h
        .api
        .lock()
        .get(&format!("{SECRETS}/hc-peer-tls"))
        .map(|s| s["data"]["tls.crt"].clone());
    assert_ne!(before, after);
    // No pod was touched: the nodes load it from the mounted Secret.
    assert!(!writes.iter().any(|w| w.contains("/pods/")));
}

#[tokio::test]
async fn the_peer_ca_rotates_in_three_phases_each_after_every_node_loaded_the_last() {
    let h = Harness::new(spec(3, "1.0.0"));
    h.settle(10).await;
    let ca_path = format!("{SECRETS}/hc-peer-ca");
    let secret_field = |path: &str, key: &str| {
        let raw = h
            .api
            .lock()
            .get(path)
            .map(|s| s["data"][key].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        String::from_utf8(base64_decode(&raw)).unwrap_or_default()
    };
    let old_ca = secret_field(&ca_path, "ca.crt");
    {
        let mut api = h.api.lock();
        let object = api.objects.get_mut(CLUSTER_PATH).unwrap();
        object["metadata"]["annotations"] = json!({"halyard.io/rotate-ca": "2026-12"});
    }
    let peer = format!("PATCH {SECRETS}/hc-peer-tls");
    let ca = format!("PATCH {ca_path}");
    let secret_writes = |writes: &[String]| -> Vec<String> {
        writes
            .iter()
            .filter(|w| w.contains("/secrets"))
            .cloned()
            .collect()
    };
    // Phase 1: the new CA, trusted beside the old.
    let (writes, _) = h.round().await;
    assert_eq!(secret_writes(&writes), [ca.clone(), peer.clone()]);
    assert_eq!(
        h.condition("CertificatesRotating"),
        ("True".into(), "TrustingBothCAs".into())
    );
    let new_ca = secret_field(&ca_path, "next.crt");
    assert_eq!(
        secret_field(&format!("{SECRETS}/hc-peer-tls"), "ca.crt"),
        format!("{old_ca}{new_ca}")
    );
    // Phase 2, once every node trusts both: the certificate from the new CA.
    let (writes, _) = h.round().await;
    assert_eq!(secret_writes(&writes), std::slice::from_ref(&peer));
    assert_eq!(
        h.condition("CertificatesRotating"),
        ("True".into(), "IssuingFromNewCA".into())
    );
    // Phase 3, once every node presents it: the old CA no longer trusted.
    let (writes, _) = h.round().await;
    assert_eq!(secret_writes(&writes), std::slice::from_ref(&peer));
    assert_eq!(
        secret_field(&format!("{SECRETS}/hc-peer-tls"), "ca.crt"),
        new_ca
    );
    // Done, once every node trusts only the new CA: it is the CA.
    let (writes, _) = h.round().await;
    assert_eq!(secret_writes(&writes), std::slice::from_ref(&ca));
    assert_eq!(secret_field(&ca_path, "ca.crt"), new_ca);
    assert_eq!(secret_field(&ca_path, "next.crt"), "");
    assert_eq!(
        h.condition("CertificatesRotating"),
        ("False".into(), "NoRotation".into())
    );
    // The same request does not rotate again; no pod was touched throughout.
    let (writes, _) = h.round().await;
    assert!(secret_writes(&writes).is_empty(), "{writes:?}");
    assert_eq!(
        h.api
            .lock()
            .objects
            .keys()
            .filter(|k| k.starts_with(&format!("{PODS_PATH}/")))
            .count(),
        3
    );
}

#[tokio::test]
async fn a_rotation_waits_for_a_node_that_has_not_loaded_the_phase() {
    let h = Harness::new(spec(3, "1.0.0"));
    h.settle(10).await;
    {
        let mut api = h.api.lock();
        let object = api.objects.get_mut(CLUSTER_PATH).unwrap();
        object["metadata"]["annotations"] = json!({"halyard.io/rotate-ca": "now"});
    }
    h.round().await;
    // Node 2 still has what it had before the rotation began.
    let before = h.nodes.0.lock().loaded.get(&1).cloned().unwrap();
    let stale = (before.0.clone(), vec![before.1[0].clone()]);
    h.nodes.0.lock().loaded.insert(2, stale.clone());
    NOW.set(NOW.get() + 60);
    let (writes, _) = reconcile_only(&h).await;
    assert!(
        !writes.iter().any(|w| w.contains("hc-peer-tls")),
        "{writes:?}"
    );
    let status = h.status();
    let rotating = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "CertificatesRotating")
        .unwrap()
        .clone();
    assert_eq!(rotating["status"], "True");
    assert!(
        rotating["message"].as_str().unwrap().contains("hc-1"),
        "{rotating}"
    );
}

/// A round without the StatefulSet controller and the nodes moving afterwards.
async fn reconcile_only(h: &Harness) -> (Vec<String>, Vec<String>) {
    if let Err(e) = reconcile(Arc::new(h.cluster()), Arc::clone(&h.ctx)).await {
        panic!("reconcile failed: {e}");
    }
    let writes = h.api.lock().take_writes();
    (writes, std::mem::take(&mut h.nodes.0.lock().calls))
}

#[test]
fn a_failing_cluster_is_retried_later_each_time_up_to_five_minutes() {
    let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

/// A TLS Secret as cert-manager writes it.
fn tls_secret(name: &str, certificate: &str, key: &str, ca: &str) -> Value {
    use k8s_openapi::ByteString;
    let data = [("tls.crt", certificate), ("tls.key", key), ("ca.crt", ca)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let mut value = serde_json::to_value(secret).unwrap();
    value["apiVersion"] = json!("v1");
    value["kind"] = json!("Secret");
    value
}

#[tokio::test]
async fn with_cert_manager_the_certificates_are_requested_mounted_and_reported_as_loaded() {
    let mut cluster = spec(3, "1.0.0");
    cluster["tls"] = json!({
        "mode": "certManager",
        "issuerRef": {"name": "iot-ca", "kind": "ClusterIssuer"},
        "serverNames": ["iot.example.com"],
    });
    let h = Harness::new(cluster);
    h.round().await;
    let (writes, _) = h.round().await;
    let certificates = "/apis/cert-manager.io/v1/namespaces/iot/certificates";
    for name in ["hc-peer", "hc-server"] {
        assert!(
            writes.contains(&format!("PATCH {certificates}/{name}")),
            "{writes:?}"
        );
    }
    // The operator keeps no CA of its own in this mode.
    assert!(h.api.lock().get(&format!("{SECRETS}/hc-peer-ca")).is_none());
    let server = h
        .api
        .lock()
        .get(&format!("{certificates}/hc-server"))
        .cloned()
        .unwrap();
    assert_eq!(server["spec"]["secretName"], "hc-server-tls");
    assert_eq!(server["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    let dns = server["spec"]["dnsNames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        dns.contains(&json!("iot.example.com")) && dns.contains(&json!("hc.iot.svc")),
        "{dns:?}"
    );
    let peer = h
        .api
        .lock()
        .get(&format!("{certificates}/hc-peer"))
        .cloned()
        .unwrap();
    assert_eq!(peer["spec"]["secretName"], "hc-peer-tls");
    assert_eq!(peer["spec"]["dnsNames"], json!(["halyard-peer"]));
    let sts = h.api.lock().get(STS_PATH).cloned().unwrap();
    let volumes = sts["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(
        volumes.contains("hc-server-tls") && volumes.contains("hc-peer-tls"),
        "{volumes}"
    );
    let config = h
        .api
        .lock()
        .get("/api/v1/namespaces/iot/configmaps/hc-config")
        .cloned()
        .unwrap();
    let config = config["data"]["halyard.toml"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        config.contains("server_cert = \"/etc/halyard/server-tls/tls.crt\""),
        "{config}"
    );

    // cert-manager issues both Secrets; the nodes load them.
    let now = NOW.get();
    let ca = halyard_operator::pki::new_ca(now, 365).unwrap();
    let node = halyard_operator::pki::issue_peer(&ca, now, 90).unwrap();
    let device_facing = halyard_operator::pki::issue_peer(&ca, now, 60).unwrap();
    for (name, pair) in [("hc-peer-tls", &node), ("hc-server-tls", &device_facing)] {
        let secret = tls_secret(
            name,
            &pair.certificate_pem,
            &pair.key_pem,
            &ca.certificate_pem,
        );
        h.api
            .lock()
            .objects
            .insert(format!("{SECRETS}/{name}"), secret);
    }
    h.settle(10).await;
    h.round().await;
    let status = h.status();
    let certificates = status["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let kinds: Vec<&str> = certificates
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["ca", "peer", "server"], "{status}");
    for certificate in &certificates {
        assert_eq!(
            certificate["loadedBy"],
            json!(["hc-0", "hc-1", "hc-2"]),
            "{certificate}"
        );
    }
}

#[tokio::test]
async fn existing_secrets_mode_without_its_secrets_is_an_invalid_spec_naming_the_field() {
    let mut cluster = spec(3, "1.0.0");
    cluster["tls"] = json!({"mode": "secrets"});
    let h = Harness::new(cluster);
    h.round().await;
    h.round().await;
    assert_eq!(
        h.condition("Degraded"),
        ("True".into(), "InvalidSpec".into())
    );
    let status = h.status();
    let degraded = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .unwrap_or_default();
    assert!(
        degraded["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.tls.secrets"),
        "{degraded}"
    );
    assert!(h.api.lock().get(STS_PATH).is_none());
}
