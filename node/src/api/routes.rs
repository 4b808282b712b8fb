//! The HTTP routes of a listener: MQTT over WebSocket at `/mqtt`, every other path to the AWS
//! API's front door; and the gateway's view of them on the multiplexed TLS port.

use std::sync::Arc;

use axum::Router;
use axum::routing::any;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::aws::{Api, MAX_BODY, handle};
use super::websocket::mqtt_over_websocket;
use crate::admission::DeviceAdmission;
use crate::admission::custom_auth::Credentials;
use crate::gateway::http::ConnectionInfo;
use crate::gateway::tls::{Devices, PresentedCertificate};
use crate::gateway::{Admission, Gate};

/// The gateway's view of the API: how a TLS connection's device is admitted, and the HTTP
/// routes of the multiplexed TLS port.
pub struct DeviceServices {
    admission: Arc<DeviceAdmission>,
    router: Router,
}

impl DeviceServices {
    pub fn new(api: Arc<Api>) -> Self {
        Self {
            admission: Arc::clone(&api.admission),
            router: router(api),
        }
    }
}

impl Devices for DeviceServices {
    fn certificate_gate(&self, certificate: PresentedCertificate) -> Arc<dyn Gate> {
        self.admission.certificate_gate(certificate)
    }

    fn custom_auth_gate(&self, info: ConnectionInfo) -> Arc<dyn Gate> {
        self.admission.authorizer_gate(info, Credentials::default())
    }

    fn router(&self) -> Router {
        self.router.clone()
    }
}

/// Every HTTP route: MQTT over WebSocket at `/mqtt`, the rest by SigV4 service and path.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/mqtt", any(mqtt_over_websocket))
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Serves the HTTP routes on a plain listener until `shutdown` turns true; `anonymous` admits
/// MQTT over WebSocket without credentials.
pub async fn run(
    listener: TcpListener,
    api: Arc<Api>,
    anonymous: Option<Admission>,
    shutdown: watch::Receiver<bool>,
) {
    crate::gateway::http::run_http_listener(listener, router(api), anonymous, shutdown).await;
}
