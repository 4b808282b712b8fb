//! Why a reconcile round failed; each maps to the `Degraded` condition's reason.

use crate::{nodes, pki, resources};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Config(#[from] resources::ConfigError),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("node admin API: {0}")]
    Admin(#[from] nodes::AdminError),
    #[error("Secret {secret} lacks {key}")]
    SecretKey { secret: String, key: String },
    #[error("{0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Config(_) => "InvalidConfig",
            Error::Pki(_) => "CertificateError",
            Error::Admin(_) => "NodeUnreachable",
            Error::SecretKey { .. } => "InvalidSecret",
            Error::Finalizer(_) => "FinalizerError",
        }
    }
}
