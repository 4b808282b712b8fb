//! Deterministic simulations of Halyard clusters (run under `--cfg madsim`).
