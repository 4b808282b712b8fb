//! Whatever a user sends, compiling a statement answers a statement or an error, and
//! evaluating one over any payload answers: nothing panics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use halyard_sql::{Document, Message, MqttProperties, NoEnvironment, SqlVersion, Statement};
use proptest::prelude::*;

/// Statement-like text: keywords, names, literals and punctuation in any order.
fn statement_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("SELECT ".to_owned()),
        Just("FROM ".to_owned()),
        Just("WHERE ".to_owned()),
        Just("VALUE ".to_owned()),
        Just("CASE ".to_owned()),
        Just("WHEN ".to_owned()),
        Just("THEN ".to_owned()),
        Just("ELSE ".to_owned()),
        Just("END ".to_owned()),
        Just("AS ".to_owned()),
        Just("AND ".to_owned()),
        Just("NOT ".to_owned()),
        Just("SET @v = ".to_owned()),
        Just("@v ".to_owned()),
        Just("* ".to_owned()),
        Just("'a/+/#' ".to_owned()),
        Just("\"s\" ".to_owned()),
        Just("a.b ".to_owned()),
        Just("temp ".to_owned()),
        Just("topic(2) ".to_owned()),
        Just("concat(a, ".to_owned()),
        Just("get(x, 1) ".to_owned()),
        Just("cast(a AS Int) ".to_owned()),
        Just("(SELECT VALUE n FROM e) ".to_owned()),
        Just("{'k': 1} ".to_owned()),
        Just("[1, 2] ".to_owned()),
        Just("1.5e3 ".to_owned()),
        Just("-7 ".to_owned()),
        "[(),+*/%<>=!,.{}\\[\\]:'\"@-]".prop_map(|s| s),
        "[a-z0-9_]{1,6}".prop_map(|s| s + " "),
    ];
    proptest::collection::vec(token, 0..24).prop_map(|tokens| tokens.concat())
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(
            br#"{"temp": 72, "a": {"b": "c"}, "e": [{"n": "x", "v": 1}, 3], "x": [1, 2]}"#.to_vec()
        ),
        Just(br#"{"temp": "72.5", "a": null}"#.to_vec()),
        Just(b"[1, 2, 3]".to_vec()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compiling_and_evaluating_never_panics(text in statement_text(), body in payload(), v2016 in any::<bool>()) {
        let version = if v2016 { SqlVersion::V2016_03_23 } else { SqlVersion::V2015_10_08 };
        if let Ok(statement) = Statement::compile(&text, version) {
            let document = Document::parse(&body);
            let properties = MqttProperties::default();
            let message = Message {
                topic: "a/b/c",
                payload: &body,
                document: &document,
                client_id: Some("c"),
                principal: None,
                timestamp_ms: 0,
                trace_id: None,
                properties: &properties,
            };
            let _ = statement.evaluate(&message, &NoEnvironment);
        }
    }

    #[test]
    fn any_text_compiles_or_is_refused_with_a_position(text in ".{0,80}") {
        if let Err(e) = Statement::compile(&text, SqlVersion::V2016_03_23) {
            prop_assert!(e.line >= 1);
            prop_assert!(e.to_string().starts_with("Line "));
        }
    }
}
