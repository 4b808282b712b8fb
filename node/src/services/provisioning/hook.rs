//! The pre-provisioning hook: a webhook (AWS calls a Lambda) asked before a device's resources
//! are created, with AWS's input; anything but `allowProvisioning: true` within the timeout
//! refuses the device, and its `parameterOverrides` are merged into the device's parameters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::templates::Hook;

/// What the hook said.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allowed(BTreeMap<String, String>),
    Denied(String),
}

/// What a hook is told about the device.
pub struct HookInput<'a> {
    pub claim_certificate_id: &'a str,
    pub certificate_id: &'a str,
    pub certificate_pem: &'a str,
    pub template_arn: &'a str,
    pub client_id: &'a str,
    pub parameters: &'a BTreeMap<String, String>,
}

/// Reads a hook's answer.
pub fn verdict(answer: &Value) -> Verdict {
    if answer.get("allowProvisioning") != Some(&Value::Bool(true)) {
        return Verdict::Denied("The pre-provisioning hook did not allow provisioning".into());
    }
    let overrides = answer
        .get("parameterOverrides")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.clone(), s.clone())),
                    Value::Number(n) => Some((k.clone(), n.to_string())),
                    Value::Bool(b) => Some((k.clone(), b.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Verdict::Allowed(overrides)
}

/// Asks `hook` whether the device may be provisioned.
pub async fn ask(hook: &Hook, input: &HookInput<'_>, timeout: Duration) -> Verdict {
    let body = json!({
        "claimCertificateId": input.claim_certificate_id,
        "certificateId": input.certificate_id,
        "certificatePem": input.certificate_pem,
        "templateArn": input.template_arn,
        "clientId": input.client_id,
        "parameters": input.parameters,
    });
    match crate::http_client::shared()
        .post_json(&hook.target_arn, &body, timeout)
        .await
    {
        Ok(answer) => verdict(&answer),
        Err(e) => {
            tracing::info!(hook = %hook.target_arn, error = %e, "pre-provisioning hook failed");
            Verdict::Denied(format!("The pre-provisioning hook failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_true_allows_and_overrides_are_strings() {
        assert!(matches!(verdict(&json!({})), Verdict::Denied(_)));
        assert!(matches!(
            verdict(&json!({"allowProvisioning": "true"})),
            Verdict::Denied(_)
        ));
        assert_eq!(
            verdict(
                &json!({"allowProvisioning": true, "parameterOverrides": {"a": "b", "n": 3, "o": {}}})
            ),
            Verdict::Allowed(BTreeMap::from([
                ("a".to_owned(), "b".to_owned()),
                ("n".to_owned(), "3".to_owned())
            ]))
        );
    }
}
