//! The CRD the chart installs is the one the operator's types describe.

use std::path::PathBuf;

const CHECKED_IN: &str = "helm/halyard/crds/halyard.io_halyardclusters.yaml";

#[test]
fn the_chart_carries_the_generated_crd() {
    let generated = halyard_operator::crd::yaml().expect("the CRD serializes");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CHECKED_IN);
    if std::env::var_os("HALYARD_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the CRD");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{CHECKED_IN} differs from the types in operator/src/crd.rs; regenerate it with \
         `cargo run -p halyard-operator -- crd > {CHECKED_IN}` (or HALYARD_BLESS=1 cargo test)"
    );
}
