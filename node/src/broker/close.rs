//! How a connection ends, as the connection and its lifecycle events both name it.

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// DISCONNECT with reason 0: no will.
    Normal,
    /// v5 DISCONNECT with reason 0x04: the will is published.
    NormalWithWill,
    PeerClosed,
    ProtocolError,
    KeepAliveTimeout,
    TakenOver,
    ServerShutdown,
    Refused,
    /// The connection's access was revoked (certificate deactivated, policy changed).
    NotAuthorized,
    /// The broker could not take what the client sent (its store cannot keep up).
    ServerBusy,
}
