//! The examples of AWS IoT's SQL reference, as a table: statement, SQL version, topic,
//! payload, and the output AWS documents (`None`: the WHERE does not hold).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use halyard_sql::{
    Document, Environment, Message, MqttProperties, NoEnvironment, Output, SqlVersion, Statement,
    Value,
};

const V2015: SqlVersion = SqlVersion::V2015_10_08;
const V2016: SqlVersion = SqlVersion::V2016_03_23;

struct Shadows;

impl Environment for Shadows {
    fn account_id(&self) -> &str {
        "123456789012"
    }

    fn thing_shadow(&self, thing: &str, name: Option<&str>) -> Option<Value> {
        let text = match (thing, name) {
            ("MyThing", None) => r#"{"state":{"reported":{"color":"blue"}},"version":3}"#,
            ("MyThing", Some("config")) => r#"{"state":{"desired":{"rate":5}},"version":1}"#,
            _ => return None,
        };
        serde_json::from_str(text).ok()
    }
}

fn run_with(
    sql: &str,
    version: SqlVersion,
    topic: &str,
    payload: &[u8],
    env: &dyn Environment,
    properties: &MqttProperties,
) -> Option<Output> {
    let statement = Statement::compile(sql, version).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let document = Document::parse(payload);
    let message = Message {
        topic,
        payload,
        document: &document,
        client_id: Some("sensor-7"),
        principal: Some("a1b2c3"),
        timestamp_ms: 1_481_825_251_155,
        trace_id: None,
        properties,
    };
    statement.evaluate(&message, env)
}

fn run(sql: &str, version: SqlVersion, topic: &str, payload: &str) -> Option<String> {
    run_with(
        sql,
        version,
        topic,
        payload.as_bytes(),
        &Shadows,
        &MqttProperties::default(),
    )
    .map(|o| String::from_utf8(o.to_payload()).unwrap())
}

const COLOR: &str = r#"{"color":"red","temperature":100}"#;
const SENML: &str = r#"{"e":[{"n":"temperature","u":"Cel","t":1234,"v":22.5},{"n":"light","u":"lm","t":1235,"v":135},{"n":"acidity","u":"pH","t":1235,"v":7}]}"#;

#[test]
fn the_reference_examples() {
    let cases: &[(&str, SqlVersion, &str, &str, Option<&str>)] = &[
        // SELECT.
        (
            "SELECT * FROM 'topic/subtopic'",
            V2015,
            "topic/subtopic",
            COLOR,
            Some(COLOR),
        ),
        (
            "SELECT color FROM 'topic/subtopic'",
            V2015,
            "topic/subtopic",
            COLOR,
            Some(r#"{"color":"red"}"#),
        ),
        (
            "SELECT color AS my_color FROM 'topic/subtopic'",
            V2015,
            "topic/subtopic",
            COLOR,
            Some(r#"{"my_color":"red"}"#),
        ),
        (
            "SELECT *, 15 as speed FROM 'topic/subtopic'",
            V2015,
            "topic/subtopic",
            COLOR,
            Some(r#"{"color":"red","temperature":100,"speed":15}"#),
        ),
        (
            "SELECT VALUE color FROM 'topic/subtopic'",
            V2016,
            "topic/subtopic",
            COLOR,
            Some(r#""red""#),
        ),
        (
            "SELECT a.b FROM 'topic'",
            V2015,
            "topic",
            r#"{"a":{"b":"c"}}"#,
            Some(r#"{"b":"c"}"#),
        ),
        (
            "SELECT a.missing AS x, color FROM 'topic'",
            V2015,
            "topic",
            r#"{"a":{},"color":"red"}"#,
            Some(r#"{"color":"red"}"#),
        ),
        // WHERE.
        (
            "SELECT * FROM 'topic/subtopic' WHERE color = 'red'",
            V2015,
            "topic/subtopic",
            COLOR,
            Some(COLOR),
        ),
        (
            "SELECT * FROM 'topic/subtopic' WHERE color = 'blue'",
            V2015,
            "topic/subtopic",
            COLOR,
            None,
        ),
        (
            "SELECT * FROM 'a' WHERE temperature > 50 AND color <> 'blue'",
            V2015,
            "a",
            COLOR,
            Some(COLOR),
        ),
        (
            "SELECT * FROM 'a' WHERE missing > 50",
            V2015,
            "a",
            COLOR,
            None,
        ),
        (
            "SELECT * FROM 'a' WHERE NOT (temperature < 50)",
            V2015,
            "a",
            COLOR,
            Some(COLOR),
        ),
        // Nested queries.
        (
            "SELECT (SELECT VALUE n FROM e) AS sensors FROM 'my/topic'",
            V2016,
            "my/topic",
            SENML,
            Some(r#"{"sensors":["temperature","light","acidity"]}"#),
        ),
        (
            "SELECT (SELECT v FROM e WHERE n = 'temperature') AS temperature, (SELECT v FROM e WHERE n = 'light') AS light FROM 'topic'",
            V2016,
            "topic",
            SENML,
            Some(r#"{"temperature":[{"v":22.5}],"light":[{"v":135}]}"#),
        ),
        // CASE.
        (
            "SELECT CASE color WHEN 'green' THEN 'go' WHEN 'yellow' THEN 'caution' WHEN 'red' THEN 'stop' ELSE 'you are not at a stop light' END AS instructions FROM 'topic/subtopic'",
            V2015,
            "topic/subtopic",
            r#"{"color":"yellow"}"#,
            Some(r#"{"instructions":"caution"}"#),
        ),
        (
            "SELECT CASE color WHEN 'green' THEN 'go' END AS instructions FROM 't'",
            V2015,
            "t",
            r#"{"color":"red"}"#,
            Some("{}"),
        ),
        // JSON extensions (2016).
        (
            "SELECT {'a': 1, 'b': temperature} AS obj FROM 't'",
            V2016,
            "t",
            COLOR,
            Some(r#"{"obj":{"a":1,"b":100}}"#),
        ),
        (
            "SELECT [1, 2, 3, 4] AS arr FROM 't'",
            V2016,
            "t",
            COLOR,
            Some(r#"{"arr":[1,2,3,4]}"#),
        ),
        (
            "SELECT 'a string' AS s, \"double\" AS d FROM 't'",
            V2016,
            "t",
            COLOR,
            Some(r#"{"s":"a string","d":"double"}"#),
        ),
        (
            "SELECT 10.0 AS x FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"x":10}"#),
        ),
        (
            "SELECT 10.0 AS x FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"x":10.0}"#),
        ),
        // Variables.
        (
            "SET @limit = 50 SELECT temperature - @limit AS over FROM 't' WHERE temperature > @limit",
            V2016,
            "t",
            COLOR,
            Some(r#"{"over":50}"#),
        ),
        // Operators.
        (
            "SELECT 5 + 6 AS a, 'con' + 'cat' AS b, 7 / 2 AS c, 7.0 / 2 AS d, 7 % 2 AS e, -temperature AS f FROM 't'",
            V2015,
            "t",
            COLOR,
            Some(r#"{"a":11,"b":"concat","c":3,"d":3.5,"e":1,"f":-100}"#),
        ),
        (
            "SELECT 'n' + 1 AS a, true + 1 AS b FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":"n1"}"#),
        ),
        // Context functions.
        (
            "SELECT topic() AS t, topic(2) AS second, topic(9) AS none FROM 'iot/+/temp'",
            V2015,
            "iot/sensors/temp",
            "{}",
            Some(r#"{"t":"iot/sensors/temp","second":"sensors"}"#),
        ),
        (
            "SELECT clientid() AS c, principal() AS p, timestamp() AS ts, accountid() AS a FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"c":"sensor-7","p":"a1b2c3","ts":1481825251155,"a":"123456789012"}"#),
        ),
        (
            "SELECT get_thing_shadow('MyThing', 'arn:aws:iam::123456789012:role/r').state.reported.color AS color FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"color":"blue"}"#),
        ),
        (
            "SELECT get_thing_shadow('MyThing', 'config', 'arn:aws:iam::123456789012:role/r').state.desired AS d FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"d":{"rate":5}}"#),
        ),
        (
            "SELECT get_thing_shadow('Nobody', 'arn:aws:iam::1:role/r') AS d FROM 't'",
            V2016,
            "t",
            "{}",
            Some("{}"),
        ),
        // Math.
        (
            "SELECT abs(-3) AS a, abs(-3.5) AS b, ceil(1.2) AS c, ceil(-1.2) AS d, floor(1.2) AS e, floor(-1.2) AS f FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":3,"b":3.5,"c":2,"d":-1,"e":1,"f":-2}"#),
        ),
        (
            "SELECT round(1.2) AS a, round(1.5) AS b, round(-1.7) AS c, round(-1.5) AS d FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":1,"b":2,"c":-2,"d":-1}"#),
        ),
        (
            "SELECT mod(8, 3) AS a, remainder(8, 3) AS b, trunc(2.3948, 2) AS c, trunc(2.3948, 0) AS d, sign(-5) AS e FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":2,"b":2,"c":2.39,"d":2,"e":-1}"#),
        ),
        (
            "SELECT bitand(13, 5) AS a, bitor(8, 5) AS b, bitxor(13, 5) AS c, bitnot(13) AS d FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":5,"b":13,"c":8,"d":-14}"#),
        ),
        (
            "SELECT sqrt(16) AS a, power(2, 10) AS b FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":4.0,"b":1024.0}"#),
        ),
        // Strings.
        (
            "SELECT concat('con', 'cat') AS a, concat(1, 'hello') AS b, concat([1, 2, 3], 'hello') AS c, concat([1, 2, 3], [4, 5]) AS d FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"a":"concat","b":"1hello","c":[1,2,3,"hello"],"d":[1,2,3,4,5]}"#),
        ),
        (
            "SELECT lower('HELLO') AS a, upper('hello') AS b, startswith('ranger', 'ran') AS c, endswith('cat', 'at') AS d, indexof('abcd', 'bc') AS e, length('hi') AS f FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"a":"hello","b":"HELLO","c":true,"d":true,"e":1,"f":2}"#),
        ),
        (
            "SELECT lpad('hello', 2) AS a, rpad('hello', 2) AS b, trim('  h  ') AS c, ltrim('  h') AS d, rtrim('h  ') AS e, replace('abcbd', 'b', 'x') AS f FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":"  hello","b":"hello  ","c":"h","d":"h","e":"h","f":"axcxd"}"#),
        ),
        (
            "SELECT substring('012345', 0) AS a, substring('012345', 2) AS b, substring('012345', 2.745) AS c, substring(123, 2) AS d, substring('012345', -1) AS e, substring('012345', 1, 3) AS f, substring('012345', -50, 50) AS g, substring('012345', 3, 1) AS h FROM 't'",
            V2015,
            "t",
            "{}",
            Some(
                r#"{"a":"012345","b":"2345","c":"2345","d":"3","e":"012345","f":"12","g":"012345","h":""}"#,
            ),
        ),
        (
            "SELECT regexp_matches('aaaa', 'a{2,}') AS a, regexp_matches('aaaa', 'b') AS b, regexp_replace('abcd', 'bc', 'x') AS c, regexp_replace('abcd', 'b(.*)d', '$1') AS d, regexp_substr('hihihello', 'hel') AS e, regexp_substr('hihihello', '[0-9]') AS f FROM 't'",
            V2015,
            "t",
            "{}",
            Some(r#"{"a":true,"b":false,"c":"axd","d":"ac","e":"hel","f":""}"#),
        ),
        (
            "SELECT chr(65) AS a, numbytes('é') AS b FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"a":"A","b":2}"#),
        ),
        // Types.
        (
            "SELECT isNull(5) AS a, isNull(null) AS b, isUndefined(missing) AS c, get(['a', 'b', 'c'], 1) AS d, get({'a': 'b'}, 'a') AS e, get(['a'], 5) AS f FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"a":false,"b":true,"c":true,"d":"b","e":"b"}"#),
        ),
        (
            "SELECT cast(true AS Int) AS a, cast('12.3' AS Int) AS b, cast(12.7 AS Int) AS c, cast(12 AS String) AS d, cast('1.5' AS Decimal) AS e, cast(0 AS Boolean) AS f FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"a":1,"b":12,"c":12,"d":"12","e":1.5,"f":false}"#),
        ),
        // Hashes and encodings.
        (
            "SELECT md5('hello') AS a, sha1('hello') AS b, sha256('hello') AS c FROM 't'",
            V2015,
            "t",
            "{}",
            Some(
                r#"{"a":"5d41402abc4b2a76b9719d911017c592","b":"aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d","c":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}"#,
            ),
        ),
        (
            "SELECT decode('aGVsbG8=', 'base64') AS a, decode(encode('hi', 'base64'), 'base64') AS b, decode('eyJhIjoxfQ==', 'base64') AS c FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"a":"hello","b":"hi","c":{"a":1}}"#),
        ),
        (
            "SELECT encode(*, 'base64') AS data FROM 't'",
            V2016,
            "t",
            "hello bytes",
            Some(r#"{"data":"aGVsbG8gYnl0ZXM="}"#),
        ),
        // A payload that is not JSON.
        (
            "SELECT * FROM 't'",
            V2015,
            "t",
            "hello bytes",
            Some("hello bytes"),
        ),
        (
            "SELECT * FROM 't' WHERE x = 1",
            V2015,
            "t",
            "hello bytes",
            None,
        ),
        // Beyond AWS's decimal range a number is Undefined, whatever its exponent.
        (
            "SELECT round(1e999999999) AS a, cast('1e999999999' AS Int) AS b, 9.99e999 * 10 AS c, 1e999 AS d FROM 't'",
            V2016,
            "t",
            "{}",
            Some(r#"{"d":1e999}"#),
        ),
        // An empty payload takes fields next to `*`.
        (
            "SELECT *, 15 AS speed FROM 't'",
            V2015,
            "t",
            "",
            Some(r#"{"speed":15}"#),
        ),
    ];
    let mut failures = Vec::new();
    for (sql, version, topic, payload, want) in cases {
        let got = run(sql, *version, topic, payload);
        if got.as_deref() != *want {
            failures.push(format!("{sql}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mqtt5_properties_are_read_by_their_functions() {
    let properties = MqttProperties {
        content_type: Some("application/json".into()),
        payload_format_utf8: Some(true),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(b"abc".to_vec()),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
    };
    let sql = "SELECT get_mqtt_property('content_type') AS ct, get_mqtt_property('format_indicator') AS f, get_mqtt_property('response_topic') AS rt, get_mqtt_property('correlation_data') AS cd, get_user_properties('k') AS k, get_user_properties() AS all FROM 't'";
    let out = run_with(sql, V2016, "t", b"{}", &NoEnvironment, &properties).unwrap();
    assert_eq!(
        String::from_utf8(out.to_payload()).unwrap(),
        r#"{"ct":"application/json","f":"UTF8_DATA","rt":"replies/1","cd":"YWJj","k":["v1","v2"],"all":[{"k":"v1"},{"k":"v2"}]}"#
    );
}

#[test]
fn newuuid_and_rand_differ_per_message() {
    let a = run(
        "SELECT newuuid() AS u, rand() AS r FROM 't'",
        V2015,
        "t",
        "{}",
    )
    .unwrap();
    let b = run(
        "SELECT newuuid() AS u, rand() AS r FROM 't'",
        V2015,
        "t",
        "{}",
    )
    .unwrap();
    assert_ne!(a, b);
    let parsed: serde_json::Value = serde_json::from_str(&a).unwrap();
    let uuid = parsed["u"].as_str().unwrap();
    assert_eq!(uuid.len(), 36);
    assert_eq!(&uuid[14..15], "4");
}

#[test]
fn malformed_statements_are_refused_with_the_position_and_the_problem() {
    let cases: &[(&str, SqlVersion, &str)] = &[
        (
            "SELECT FROM 'a'",
            V2015,
            "Line 1:7 unexpected keyword 'FROM', expecting an expression",
        ),
        (
            "SELECT * FROM a",
            V2015,
            "Line 1:14 unexpected 'a', expecting a quoted topic filter",
        ),
        (
            "SELECT * FROM 'a/#/b'",
            V2015,
            "Line 1:14 topic filter 'a/#/b': '#' must be a whole level, and the last",
        ),
        (
            "SELECT nosuch(1) FROM 'a'",
            V2015,
            "Line 1:7 unknown function 'nosuch' (awsIotSqlVersion 2015-10-08)",
        ),
        (
            "SELECT {'a': 1} FROM 'a'",
            V2015,
            "Line 1:7 an object literal needs awsIotSqlVersion 2016-03-23",
        ),
        (
            "SELECT * FROM 'a' WHERE",
            V2015,
            "Line 1:23 unexpected end of statement, expecting an expression",
        ),
        (
            "SELECT 'open FROM 'a'",
            V2015,
            "Line 1:20 unterminated string",
        ),
        (
            "SELECT a,\n  b FROM 'x' WHERE (a = 1",
            V2015,
            "Line 2:25 unexpected end of statement, expecting ')'",
        ),
        (
            "SELECT @v FROM 'a'",
            V2016,
            "Line 1:7 variable '@v' is not set",
        ),
        (
            "SELECT CASE a END FROM 'a'",
            V2015,
            "Line 1:14 unexpected 'END', expecting WHEN",
        ),
        (
            "SELECT cast(a AS Blob) FROM 'a'",
            V2016,
            "Line 1:17 cannot cast to 'Blob'",
        ),
        (
            "SELECT * FROM 'a' extra",
            V2015,
            "Line 1:18 unexpected 'extra', expecting end of statement",
        ),
    ];
    for (sql, version, want) in cases {
        match Statement::compile(sql, *version) {
            Ok(_) => panic!("{sql}: compiled"),
            Err(e) => assert_eq!(e.to_string(), *want, "{sql}"),
        }
    }
}

#[test]
fn the_from_filter_and_version_are_kept() {
    let s = Statement::compile("SELECT * FROM 'sensors/+/telemetry'", V2016).unwrap();
    assert_eq!(s.topic_filter(), Some("sensors/+/telemetry"));
    assert_eq!(s.version(), V2016);
    let ingest_only = Statement::compile("SELECT *", V2016).unwrap();
    assert_eq!(ingest_only.topic_filter(), None);
}
