//! Provisioning templates: their grammar (`Parameters`, `Mappings`, `Resources`,
//! `DeviceConfiguration`), checked whole when a template is saved, and their evaluation against
//! a device's parameters into the resources to create, pure and with no I/O.
//!
//! A template is refused when it is saved, not when a device first uses it: every resource's
//! type and properties, every intrinsic's shape, every `Ref` to an undeclared parameter and
//! every `Fn::FindInMap` of an undeclared mapping is found then, and named in the message.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// The certificate pseudo-parameter every template may refer to.
pub const CERTIFICATE_ID: &str = "AWS::IoT::Certificate::Id";

/// The subject fields a JITP template may refer to, and the name fields they are read from.
pub const SUBJECT_PARAMETERS: [(&str, &str); 7] = [
    ("AWS::IoT::Certificate::Country", "Subject.Country"),
    (
        "AWS::IoT::Certificate::Organization",
        "Subject.Organization",
    ),
    (
        "AWS::IoT::Certificate::OrganizationalUnit",
        "Subject.OrganizationalUnit",
    ),
    (
        "AWS::IoT::Certificate::DistinguishedNameQualifier",
        "Subject.DistinguishedNameQualifier",
    ),
    ("AWS::IoT::Certificate::StateName", "Subject.State"),
    ("AWS::IoT::Certificate::CommonName", "Subject.CommonName"),
    (
        "AWS::IoT::Certificate::SerialNumber",
        "Subject.SerialNumber",
    ),
];

/// What a template provisions, which decides the certificate and pseudo-parameters it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Fleet provisioning by claim (the MQTT API); the certificate exists already.
    FleetProvisioning,
    /// Just-in-time provisioning by a CA's registration config; the certificate too.
    Jitp,
    /// RegisterThing over HTTP: the template brings its certificate (CSR, PEM or id).
    Registration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

fn error(message: impl Into<String>) -> TemplateError {
    TemplateError(message.into())
}

/// What a template does where a resource exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Override {
    #[default]
    DoNothing,
    Replace,
    Fail,
    Merge,
}

impl Override {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "DO_NOTHING" => Self::DoNothing,
            "REPLACE" => Self::Replace,
            "FAIL" => Self::Fail,
            "MERGE" => Self::Merge,
            _ => return None,
        })
    }
}

/// A thing to create or update.
#[derive(Debug, Clone, PartialEq)]
pub struct ThingSpec {
    pub logical_id: String,
    pub name: String,
    pub attributes: Option<BTreeMap<String, String>>,
    pub thing_type: Option<String>,
    pub groups: Option<Vec<String>>,
    pub attributes_override: Override,
    pub type_override: Override,
    pub groups_override: Override,
}

/// Where a template's certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertificateSource {
    Id(String),
    Csr(String),
    Pem { pem: String, ca_pem: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateSpec {
    pub logical_id: String,
    pub source: CertificateSource,
    pub active: bool,
    pub status_override: Override,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicySpec {
    Named {
        logical_id: String,
        name: String,
    },
    Document {
        logical_id: String,
        document: String,
    },
}

/// A template evaluated for one device: the resources to create and what to tell the device.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resolved {
    pub thing: Option<ThingSpec>,
    pub certificate: Option<CertificateSpec>,
    pub policies: Vec<PolicySpec>,
    pub device_configuration: BTreeMap<String, String>,
}

impl Resolved {
    /// Whether the only certificate this touches is `certificate_id`: a device proves it
    /// holds one certificate and may not have a template activate another.
    pub fn provisions_only(&self, certificate_id: &str) -> bool {
        self.certificate
            .as_ref()
            .is_none_or(|c| c.source == CertificateSource::Id(certificate_id.to_owned()))
    }
}

/// A template, parsed and checked.
#[derive(Debug, Clone)]
pub struct Template {
    kind: Kind,
    /// Declared parameters and their defaults.
    parameters: BTreeMap<String, Option<Value>>,
    mappings: Map<String, Value>,
    resources: Vec<(String, Map<String, Value>)>,
    device_configuration: Map<String, Value>,
}

const MAX_BODY: usize = 10_240;
const THING: &str = "AWS::IoT::Thing";
const CERTIFICATE: &str = "AWS::IoT::Certificate";
const POLICY: &str = "AWS::IoT::Policy";

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, TemplateError> {
    value
        .as_object()
        .ok_or_else(|| error(format!("{what} must be a JSON object")))
}

impl Template {
    /// Parses and checks `body` as a template of `kind`.
    pub fn parse(body: &str, kind: Kind) -> Result<Self, TemplateError> {
        if body.len() > MAX_BODY {
            return Err(error(format!(
                "The template body is {} bytes; at most {MAX_BODY} are allowed",
                body.len()
            )));
        }
        let root: Value = serde_json::from_str(body)
            .map_err(|e| error(format!("The template body is not valid JSON: {e}")))?;
        let root = object(&root, "The template body")?;
        for section in root.keys() {
            if !matches!(
                section.as_str(),
                "Parameters" | "Mappings" | "Resources" | "DeviceConfiguration"
            ) {
                return Err(error(format!(
                    "The template has an unknown section {section}"
                )));
            }
        }
        let mut parameters = BTreeMap::new();
        if let Some(declared) = root.get("Parameters") {
            for (name, declaration) in object(declared, "Parameters")? {
                let declaration = object(declaration, &format!("Parameter {name}"))?;
                match declaration.get("Type").and_then(Value::as_str) {
                    Some("String") => {}
                    Some(other) => {
                        return Err(error(format!(
                            "Parameter {name} has Type {other}; only String is supported"
                        )));
                    }
                    None => return Err(error(format!("Parameter {name} has no Type"))),
                }
                let default = declaration.get("Default").cloned();
                if let Some(default) = &default
                    && !(default.is_string() || default.is_number() || default.is_boolean())
                {
                    return Err(error(format!(
                        "Parameter {name} has a Default that is not a string"
                    )));
                }
                parameters.insert(name.clone(), default);
            }
        }
        let mappings = match root.get("Mappings") {
            None => Map::new(),
            Some(m) => {
                let m = object(m, "Mappings")?;
                for (name, top) in m {
                    for (key, second) in object(top, &format!("Mapping {name}"))? {
                        for (leaf, value) in object(second, &format!("Mapping {name}.{key}"))? {
                            if value.is_object() {
                                return Err(error(format!(
                                    "Mapping {name}.{key}.{leaf} must be a string or a list"
                                )));
                            }
                        }
                    }
                }
                m.clone()
            }
        };
        let mut template = Self {
            kind,
            parameters,
            mappings,
            resources: Vec::new(),
            device_configuration: Map::new(),
        };
        let resources = object(
            root.get("Resources")
                .ok_or_else(|| error("The template has no Resources"))?,
            "Resources",
        )?;
        let mut seen = BTreeMap::<&str, usize>::new();
        for (logical_id, resource) in resources {
            let resource = object(resource, &format!("Resource {logical_id}"))?;
            let kind = resource
                .get("Type")
                .and_then(Value::as_str)
                .ok_or_else(|| error(format!("Resource {logical_id} has no Type")))?;
            let properties = match resource.get("Properties") {
                Some(p) => object(p, &format!("Resource {logical_id} Properties"))?.clone(),
                None => Map::new(),
            };
            for key in resource.keys() {
                if !matches!(key.as_str(), "Type" | "Properties" | "OverrideSettings") {
                    return Err(error(format!(
                        "Resource {logical_id} has an unknown key {key}"
                    )));
                }
            }
            let overrides = match resource.get("OverrideSettings") {
                Some(o) => object(o, &format!("Resource {logical_id} OverrideSettings"))?.clone(),
                None => Map::new(),
            };
            match kind {
                THING => template.check_thing(logical_id, &properties, &overrides)?,
                CERTIFICATE => template.check_certificate(logical_id, &properties, &overrides)?,
                POLICY => template.check_policy(logical_id, &properties, &overrides)?,
                other => {
                    return Err(error(format!(
                        "Resource {logical_id} has Type {other}; supported are {THING}, {CERTIFICATE} and {POLICY}"
                    )));
                }
            }
            let count = seen.entry(kind).or_default();
            *count += 1;
            if kind != POLICY && *count > 1 {
                return Err(error(format!(
                    "Resource {logical_id}: a template has at most one {kind}"
                )));
            }
            let mut stored = properties;
            stored.insert("Type".into(), Value::String(kind.to_owned()));
            if !overrides.is_empty() {
                stored.insert("OverrideSettings".into(), Value::Object(overrides));
            }
            template.resources.push((logical_id.clone(), stored));
        }
        if !seen.contains_key(CERTIFICATE) && seen.contains_key(POLICY) {
            return Err(error(
                "A template with a policy must have an AWS::IoT::Certificate resource to attach it to",
            ));
        }
        if let Some(configuration) = root.get("DeviceConfiguration") {
            if kind == Kind::Jitp {
                return Err(error(
                    "DeviceConfiguration is only for fleet provisioning templates",
                ));
            }
            for (name, value) in object(configuration, "DeviceConfiguration")? {
                if value.is_object() && !is_intrinsic(value) || value.is_array() {
                    return Err(error(format!(
                        "DeviceConfiguration {name} must be a string or an intrinsic function; it is flat"
                    )));
                }
                template.check_expression(value, &format!("DeviceConfiguration {name}"))?;
            }
            template.device_configuration = object(configuration, "DeviceConfiguration")?.clone();
        }
        Ok(template)
    }

    fn check_keys(
        logical_id: &str,
        properties: &Map<String, Value>,
        allowed: &[&str],
    ) -> Result<(), TemplateError> {
        for key in properties.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(error(format!(
                    "Resource {logical_id} has an unknown property {key}; allowed are {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn check_overrides(
        logical_id: &str,
        overrides: &Map<String, Value>,
        allowed: &[&str],
        mergeable: &[&str],
    ) -> Result<(), TemplateError> {
        for (property, setting) in overrides {
            if !allowed.contains(&property.as_str()) {
                return Err(error(format!(
                    "Resource {logical_id} has OverrideSettings for {property}, which cannot be overridden"
                )));
            }
            let parsed = setting.as_str().and_then(Override::parse).ok_or_else(|| {
                error(format!(
                    "Resource {logical_id} OverrideSettings {property} must be one of DO_NOTHING, REPLACE, FAIL, MERGE"
                ))
            })?;
            if parsed == Override::Merge && !mergeable.contains(&property.as_str()) {
                return Err(error(format!(
                    "Resource {logical_id} OverrideSettings {property} cannot be MERGE"
                )));
            }
        }
        Ok(())
    }

    fn check_thing(
        &self,
        logical_id: &str,
        properties: &Map<String, Value>,
        overrides: &Map<String, Value>,
    ) -> Result<(), TemplateError> {
        Self::check_keys(
            logical_id,
            properties,
            &[
                "ThingName",
                "AttributePayload",
                "ThingTypeName",
                "ThingGroups",
                "BillingGroup",
            ],
        )?;
        if properties.contains_key("BillingGroup") {
            return Err(error(format!(
                "Resource {logical_id}: BillingGroup is not supported"
            )));
        }
        let name = properties
            .get("ThingName")
            .ok_or_else(|| error(format!("Resource {logical_id} has no ThingName")))?;
        self.check_expression(name, &format!("Resource {logical_id} ThingName"))?;
        if let Some(attributes) = properties.get("AttributePayload") {
            let attributes = object(
                attributes,
                &format!("Resource {logical_id} AttributePayload"),
            )?;
            for (name, value) in attributes {
                self.check_expression(
                    value,
                    &format!("Resource {logical_id} AttributePayload {name}"),
                )?;
            }
        }
        if let Some(t) = properties.get("ThingTypeName") {
            self.check_expression(t, &format!("Resource {logical_id} ThingTypeName"))?;
        }
        if let Some(groups) = properties.get("ThingGroups") {
            self.check_expression(groups, &format!("Resource {logical_id} ThingGroups"))?;
        }
        Self::check_overrides(
            logical_id,
            overrides,
            &["AttributePayload", "ThingTypeName", "ThingGroups"],
            &["AttributePayload", "ThingGroups"],
        )
    }

    fn check_certificate(
        &self,
        logical_id: &str,
        properties: &Map<String, Value>,
        overrides: &Map<String, Value>,
    ) -> Result<(), TemplateError> {
        Self::check_keys(
            logical_id,
            properties,
            &[
                "CertificateId",
                "CertificateSigningRequest",
                "CertificatePem",
                "CACertificatePem",
                "Status",
            ],
        )?;
        let sources = [
            "CertificateId",
            "CertificateSigningRequest",
            "CertificatePem",
        ]
        .iter()
        .filter(|s| properties.contains_key(**s))
        .count();
        if sources != 1 {
            return Err(error(format!(
                "Resource {logical_id} must have exactly one of CertificateId, CertificateSigningRequest or CertificatePem"
            )));
        }
        if self.kind != Kind::Registration && !properties.contains_key("CertificateId") {
            return Err(error(format!(
                "Resource {logical_id}: a provisioning template's certificate is given by CertificateId"
            )));
        }
        if properties.contains_key("CACertificatePem") && !properties.contains_key("CertificatePem")
        {
            return Err(error(format!(
                "Resource {logical_id}: CACertificatePem goes with CertificatePem"
            )));
        }
        for (name, value) in properties {
            self.check_expression(value, &format!("Resource {logical_id} {name}"))?;
        }
        if let Some(Value::String(status)) = properties.get("Status")
            && !matches!(status.to_ascii_uppercase().as_str(), "ACTIVE" | "INACTIVE")
        {
            return Err(error(format!(
                "Resource {logical_id} Status must be ACTIVE or INACTIVE"
            )));
        }
        Self::check_overrides(logical_id, overrides, &["Status"], &[])
    }

    fn check_policy(
        &self,
        logical_id: &str,
        properties: &Map<String, Value>,
        overrides: &Map<String, Value>,
    ) -> Result<(), TemplateError> {
        Self::check_keys(logical_id, properties, &["PolicyName", "PolicyDocument"])?;
        match (
            properties.get("PolicyName"),
            properties.get("PolicyDocument"),
        ) {
            (Some(name), None) => {
                self.check_expression(name, &format!("Resource {logical_id} PolicyName"))?
            }
            (None, Some(document)) => {
                let text = match document {
                    Value::String(s) => s.clone(),
                    Value::Object(_) if !is_intrinsic(document) => document.to_string(),
                    _ => {
                        self.check_expression(
                            document,
                            &format!("Resource {logical_id} PolicyDocument"),
                        )?;
                        String::new()
                    }
                };
                if !text.is_empty()
                    && let Err(e) = crate::auth::policy::Policy::parse(&text)
                {
                    return Err(error(format!(
                        "Resource {logical_id} PolicyDocument is not a valid policy: {}",
                        e.0
                    )));
                }
            }
            _ => {
                return Err(error(format!(
                    "Resource {logical_id} must have exactly one of PolicyName or PolicyDocument"
                )));
            }
        }
        if !overrides.is_empty() {
            return Err(error(format!(
                "Resource {logical_id}: a policy has no OverrideSettings"
            )));
        }
        Ok(())
    }

    fn known_pseudo(&self, name: &str) -> bool {
        name == CERTIFICATE_ID
            || name == "AWS::Region"
            || name == "AWS::AccountId"
            || (self.kind == Kind::Jitp && SUBJECT_PARAMETERS.iter().any(|(p, _)| *p == name))
    }

    fn check_reference(&self, name: &str, at: &str) -> Result<(), TemplateError> {
        if self.parameters.contains_key(name) || self.known_pseudo(name) {
            Ok(())
        } else {
            Err(error(format!(
                "{at} refers to {name}, which is not a declared parameter"
            )))
        }
    }

    /// Checks the intrinsics in `value` for their shape and their references.
    fn check_expression(&self, value: &Value, at: &str) -> Result<(), TemplateError> {
        match value {
            Value::Array(items) => items
                .iter()
                .try_for_each(|item| self.check_expression(item, at)),
            Value::Object(map) if map.len() == 1 => {
                let (function, argument) = map
                    .iter()
                    .next()
                    .map_or(("", &Value::Null), |(k, v)| (k.as_str(), v));
                self.check_intrinsic(function, argument, at)
            }
            Value::Object(_) => Err(error(format!(
                "{at} is an object that is not an intrinsic function"
            ))),
            _ => Ok(()),
        }
    }

    fn check_intrinsic(
        &self,
        function: &str,
        argument: &Value,
        at: &str,
    ) -> Result<(), TemplateError> {
        let arity = |n: usize| -> Result<&Vec<Value>, TemplateError> {
            match argument {
                Value::Array(items) if items.len() == n => Ok(items),
                _ => Err(error(format!(
                    "{at}: {function} takes a list of {n} arguments"
                ))),
            }
        };
        match function {
            "Ref" => match argument {
                Value::String(name) => self.check_reference(name, at),
                _ => Err(error(format!("{at}: Ref takes a parameter's name"))),
            },
            "Fn::Join" => {
                let items = arity(2)?;
                if !items[0].is_string() {
                    return Err(error(format!(
                        "{at}: Fn::Join's delimiter must be a string"
                    )));
                }
                self.check_expression(&items[1], at)
            }
            "Fn::Select" => {
                let items = arity(2)?;
                self.check_expression(&items[0], at)?;
                self.check_expression(&items[1], at)
            }
            "Fn::Split" => {
                let items = arity(2)?;
                if !items[0].is_string() {
                    return Err(error(format!(
                        "{at}: Fn::Split's delimiter must be a string"
                    )));
                }
                self.check_expression(&items[1], at)
            }
            "Fn::FindInMap" => {
                let items = arity(3)?;
                if let Value::String(map) = &items[0]
                    && !self.mappings.contains_key(map)
                {
                    return Err(error(format!(
                        "{at}: Fn::FindInMap names the mapping {map}, which is not declared"
                    )));
                }
                items
                    .iter()
                    .try_for_each(|item| self.check_expression(item, at))
            }
            "Fn::Sub" => {
                let (text, variables) = match argument {
                    Value::String(text) => (text.as_str(), None),
                    Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
                        (Value::String(text), Value::Object(vars)) => (text.as_str(), Some(vars)),
                        _ => {
                            return Err(error(format!(
                                "{at}: Fn::Sub takes a string, or a string and a map of variables"
                            )));
                        }
                    },
                    _ => {
                        return Err(error(format!(
                            "{at}: Fn::Sub takes a string, or a string and a map of variables"
                        )));
                    }
                };
                if let Some(vars) = variables {
                    for value in vars.values() {
                        self.check_expression(value, at)?;
                    }
                }
                for name in sub_variables(text).map_err(|e| error(format!("{at}: {}", e.0)))? {
                    if variables.is_some_and(|v| v.contains_key(&name)) {
                        continue;
                    }
                    self.check_reference(&name, at)?;
                }
                Ok(())
            }
            other => Err(error(format!(
                "{at} uses {other}, which is not a supported intrinsic function (Ref, Fn::Join, Fn::Select, Fn::FindInMap, Fn::Split, Fn::Sub)"
            ))),
        }
    }

    /// The names of the parameters the template declares.
    pub fn parameter_names(&self) -> BTreeSet<&str> {
        self.parameters.keys().map(String::as_str).collect()
    }

    /// Evaluates the template for a device: `parameters` are the device's (and the hook's),
    /// `pseudo` the pseudo-parameters the provisioning knows (the certificate's id, its subject).
    pub fn resolve(
        &self,
        parameters: &BTreeMap<String, String>,
        pseudo: &BTreeMap<String, String>,
    ) -> Result<Resolved, TemplateError> {
        let mut values = BTreeMap::new();
        for (name, default) in &self.parameters {
            // What the provisioning knows of the certificate (its id, its subject) is never
            // the device's to say: a device could otherwise name another certificate.
            let given = if name.starts_with("AWS::") {
                pseudo.get(name)
            } else {
                parameters.get(name)
            };
            let value = match (given, default) {
                (Some(given), _) => Value::String(given.clone()),
                (None, Some(default)) => Value::String(scalar_text(default)),
                (None, None) => {
                    return Err(error(format!(
                        "Parameter {name} has no value and no default"
                    )));
                }
            };
            values.insert(name.clone(), value);
        }
        let scope = Scope {
            values: &values,
            pseudo,
            mappings: &self.mappings,
        };
        let mut resolved = Resolved::default();
        for (logical_id, properties) in &self.resources {
            let at = |property: &str| format!("Resource {logical_id} {property}");
            match properties.get("Type").and_then(Value::as_str) {
                Some(THING) => {
                    let name = scope.text(property(properties, "ThingName"), &at("ThingName"))?;
                    let attributes = match properties.get("AttributePayload") {
                        None => None,
                        Some(Value::Object(map)) => Some(
                            map.iter()
                                .map(|(k, v)| {
                                    Ok((
                                        k.clone(),
                                        scope.text(v, &at(&format!("AttributePayload {k}")))?,
                                    ))
                                })
                                .collect::<Result<BTreeMap<_, _>, TemplateError>>()?,
                        ),
                        Some(_) => None,
                    };
                    let thing_type = properties
                        .get("ThingTypeName")
                        .map(|v| scope.text(v, &at("ThingTypeName")))
                        .transpose()?
                        .filter(|t| !t.is_empty());
                    let groups = properties
                        .get("ThingGroups")
                        .map(|v| scope.list(v, &at("ThingGroups")))
                        .transpose()?;
                    resolved.thing = Some(ThingSpec {
                        logical_id: logical_id.clone(),
                        name,
                        attributes,
                        thing_type,
                        groups,
                        attributes_override: override_of(properties, "AttributePayload"),
                        type_override: override_of(properties, "ThingTypeName"),
                        groups_override: override_of(properties, "ThingGroups"),
                    });
                }
                Some(CERTIFICATE) => {
                    let source = if let Some(id) = properties.get("CertificateId") {
                        CertificateSource::Id(scope.text(id, &at("CertificateId"))?)
                    } else if let Some(csr) = properties.get("CertificateSigningRequest") {
                        CertificateSource::Csr(scope.text(csr, &at("CertificateSigningRequest"))?)
                    } else {
                        CertificateSource::Pem {
                            pem: scope.text(
                                property(properties, "CertificatePem"),
                                &at("CertificatePem"),
                            )?,
                            ca_pem: properties
                                .get("CACertificatePem")
                                .map(|v| scope.text(v, &at("CACertificatePem")))
                                .transpose()?,
                        }
                    };
                    let active = match properties.get("Status") {
                        None => true,
                        Some(v) => {
                            let status = scope.text(v, &at("Status"))?;
                            match status.to_ascii_uppercase().as_str() {
                                "ACTIVE" => true,
                                "INACTIVE" => false,
                                _ => {
                                    return Err(error(format!(
                                        "{} must be ACTIVE or INACTIVE, not {status}",
                                        at("Status")
                                    )));
                                }
                            }
                        }
                    };
                    resolved.certificate = Some(CertificateSpec {
                        logical_id: logical_id.clone(),
                        source,
                        active,
                        status_override: override_of(properties, "Status"),
                    });
                }
                Some(POLICY) => {
                    if let Some(name) = properties.get("PolicyName") {
                        resolved.policies.push(PolicySpec::Named {
                            logical_id: logical_id.clone(),
                            name: scope.text(name, &at("PolicyName"))?,
                        });
                    } else {
                        let document = match property(properties, "PolicyDocument") {
                            Value::Object(map) if !is_intrinsic_map(map) => {
                                Value::Object(map.clone()).to_string()
                            }
                            other => scope.text(other, &at("PolicyDocument"))?,
                        };
                        resolved.policies.push(PolicySpec::Document {
                            logical_id: logical_id.clone(),
                            document,
                        });
                    }
                }
                _ => {}
            }
        }
        for (name, value) in &self.device_configuration {
            resolved.device_configuration.insert(
                name.clone(),
                scope.text(value, &format!("DeviceConfiguration {name}"))?,
            );
        }
        Ok(resolved)
    }
}

fn property<'a>(properties: &'a Map<String, Value>, name: &str) -> &'a Value {
    properties.get(name).unwrap_or(&Value::Null)
}

fn override_of(properties: &Map<String, Value>, property: &str) -> Override {
    properties
        .get("OverrideSettings")
        .and_then(|o| o.get(property))
        .and_then(Value::as_str)
        .and_then(Override::parse)
        .unwrap_or_default()
}

fn is_intrinsic_map(map: &Map<String, Value>) -> bool {
    map.len() == 1
        && map
            .keys()
            .next()
            .is_some_and(|k| k == "Ref" || k.starts_with("Fn::"))
}

fn is_intrinsic(value: &Value) -> bool {
    value.as_object().is_some_and(is_intrinsic_map)
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The variables `${name}` of an `Fn::Sub` string; `${!literal}` is not one.
fn sub_variables(text: &str) -> Result<Vec<String>, TemplateError> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| error("Fn::Sub has a ${ without its closing }"))?;
        let name = &after[..end];
        if !name.starts_with('!') {
            if name.is_empty() {
                return Err(error("Fn::Sub has an empty ${}"));
            }
            names.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// What an expression is evaluated in.
struct Scope<'a> {
    values: &'a BTreeMap<String, Value>,
    pseudo: &'a BTreeMap<String, String>,
    mappings: &'a Map<String, Value>,
}

impl Scope<'_> {
    fn reference(&self, name: &str, at: &str) -> Result<Value, TemplateError> {
        if let Some(value) = self.values.get(name) {
            return Ok(value.clone());
        }
        self.pseudo
            .get(name)
            .map(|v| Value::String(v.clone()))
            .ok_or_else(|| error(format!("{at}: {name} has no value for this device")))
    }

    fn evaluate(&self, value: &Value, at: &str) -> Result<Value, TemplateError> {
        match value {
            Value::Object(map) if is_intrinsic_map(map) => {
                let (function, argument) = map
                    .iter()
                    .next()
                    .ok_or_else(|| error(format!("{at}: an empty intrinsic")))?;
                self.intrinsic(function, argument, at)
            }
            Value::Array(items) => Ok(Value::Array(
                items
                    .iter()
                    .map(|item| self.evaluate(item, at))
                    .collect::<Result<_, _>>()?,
            )),
            other => Ok(other.clone()),
        }
    }

    fn intrinsic(
        &self,
        function: &str,
        argument: &Value,
        at: &str,
    ) -> Result<Value, TemplateError> {
        let items = argument.as_array().map(Vec::as_slice).unwrap_or_default();
        match function {
            "Ref" => self.reference(argument.as_str().unwrap_or_default(), at),
            "Fn::Join" => {
                let delimiter = items.first().and_then(Value::as_str).unwrap_or_default();
                let list = self.list(items.get(1).unwrap_or(&Value::Null), at)?;
                Ok(Value::String(list.join(delimiter)))
            }
            "Fn::Split" => {
                let delimiter = items.first().and_then(Value::as_str).unwrap_or_default();
                let text = self.text(items.get(1).unwrap_or(&Value::Null), at)?;
                if delimiter.is_empty() {
                    return Err(error(format!("{at}: Fn::Split's delimiter is empty")));
                }
                Ok(Value::Array(
                    text.split(delimiter)
                        .map(|s| Value::String(s.to_owned()))
                        .collect(),
                ))
            }
            "Fn::Select" => {
                let index = self.text(items.first().unwrap_or(&Value::Null), at)?;
                let index: usize = index.trim().parse().map_err(|_| {
                    error(format!("{at}: Fn::Select's index {index} is not a number"))
                })?;
                let list = match self.evaluate(items.get(1).unwrap_or(&Value::Null), at)? {
                    Value::Array(list) => list,
                    _ => return Err(error(format!("{at}: Fn::Select takes a list"))),
                };
                match list.get(index) {
                    Some(Value::Null) | None => Err(error(format!(
                        "{at}: Fn::Select's index {index} is out of range of a list of {}",
                        list.len()
                    ))),
                    Some(value) => Ok(value.clone()),
                }
            }
            "Fn::FindInMap" => {
                let map = self.text(items.first().unwrap_or(&Value::Null), at)?;
                let top = self.text(items.get(1).unwrap_or(&Value::Null), at)?;
                let second = self.text(items.get(2).unwrap_or(&Value::Null), at)?;
                self.mappings
                    .get(&map)
                    .and_then(|m| m.get(&top))
                    .and_then(|m| m.get(&second))
                    .cloned()
                    .ok_or_else(|| {
                        error(format!(
                            "{at}: Fn::FindInMap finds nothing at {map}.{top}.{second}"
                        ))
                    })
            }
            "Fn::Sub" => {
                let (text, variables) = match argument {
                    Value::String(text) => (text.as_str(), None),
                    _ => (
                        items.first().and_then(Value::as_str).unwrap_or_default(),
                        items.get(1).and_then(Value::as_object),
                    ),
                };
                let mut out = String::new();
                let mut rest = text;
                while let Some(start) = rest.find("${") {
                    out.push_str(&rest[..start]);
                    let after = &rest[start + 2..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| error(format!("{at}: Fn::Sub has a ${{ without its }}")))?;
                    let name = &after[..end];
                    if let Some(literal) = name.strip_prefix('!') {
                        out.push_str("${");
                        out.push_str(literal);
                        out.push('}');
                    } else {
                        let value = match variables.and_then(|v| v.get(name)) {
                            Some(expression) => self.text(expression, at)?,
                            None => scalar_text(&self.reference(name, at)?),
                        };
                        out.push_str(&value);
                    }
                    rest = &after[end + 1..];
                }
                out.push_str(rest);
                Ok(Value::String(out))
            }
            other => Err(error(format!("{at}: {other} is not supported"))),
        }
    }

    /// `value` evaluated to one string.
    fn text(&self, value: &Value, at: &str) -> Result<String, TemplateError> {
        match self.evaluate(value, at)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Null => Err(error(format!("{at} has no value"))),
            _ => Err(error(format!("{at} must be a string"))),
        }
    }

    /// `value` evaluated to a list of strings.
    fn list(&self, value: &Value, at: &str) -> Result<Vec<String>, TemplateError> {
        match self.evaluate(value, at)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(error(format!("{at} must be a list of strings"))),
                })
                .collect(),
            Value::String(s) => Ok(vec![s]),
            _ => Err(error(format!("{at} must be a list of strings"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"{
      "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Region": {"Type": "String", "Default": "eu"},
        "Sensors": {"Type": "String", "Default": "temp,humidity"}
      },
      "Mappings": {"Firmware": {"eu": {"url": "https://eu.example/fw"}}},
      "Resources": {
        "thing": {
          "Type": "AWS::IoT::Thing",
          "Properties": {
            "ThingName": {"Fn::Join": ["", ["meter_", {"Ref": "SerialNumber"}]]},
            "AttributePayload": {"region": {"Ref": "Region"}, "first": {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "Sensors"}]}]}},
            "ThingGroups": ["meters", {"Fn::Sub": "${Region}-meters"}]
          },
          "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "DO_NOTHING"}
        },
        "certificate": {
          "Type": "AWS::IoT::Certificate",
          "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}
        },
        "policy": {
          "Type": "AWS::IoT::Policy",
          "Properties": {"PolicyDocument": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}}
        }
      },
      "DeviceConfiguration": {"firmware": {"Fn::FindInMap": ["Firmware", {"Ref": "Region"}, "url"]}, "literal": "${!x}"}
    }"#;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_fleet_template_resolves_with_parameters_defaults_mappings_and_intrinsics() {
        let template = Template::parse(FLEET, Kind::FleetProvisioning).unwrap();
        let resolved = template
            .resolve(
                &params(&[("SerialNumber", "42")]),
                &params(&[(CERTIFICATE_ID, "abc")]),
            )
            .unwrap();
        let thing = resolved.thing.unwrap();
        assert_eq!(thing.name, "meter_42");
        assert_eq!(
            thing.attributes.unwrap(),
            params(&[("region", "eu"), ("first", "temp")])
        );
        assert_eq!(thing.groups.unwrap(), vec!["meters", "eu-meters"]);
        assert_eq!(thing.attributes_override, Override::Merge);
        let certificate = resolved.certificate.unwrap();
        assert_eq!(certificate.source, CertificateSource::Id("abc".into()));
        assert!(certificate.active);
        assert!(
            matches!(&resolved.policies[0], PolicySpec::Document { document, .. } if document.contains("iot:Connect"))
        );
        assert_eq!(
            resolved.device_configuration,
            params(&[("firmware", "https://eu.example/fw"), ("literal", "${!x}")])
        );
    }

    #[test]
    fn a_missing_parameter_or_an_out_of_range_select_fails_the_device_not_the_template() {
        let template = Template::parse(FLEET, Kind::FleetProvisioning).unwrap();
        let missing = template
            .resolve(&BTreeMap::new(), &params(&[(CERTIFICATE_ID, "abc")]))
            .unwrap_err();
        assert!(missing.0.contains("SerialNumber"), "{missing}");
        let out_of_range = template
            .resolve(
                &params(&[("SerialNumber", "1"), ("Sensors", "")]),
                &params(&[(CERTIFICATE_ID, "abc")]),
            )
            .map(|r| r.thing.unwrap().attributes.unwrap()["first"].clone());
        // An empty string splits into one empty item: index 0 is in range.
        assert_eq!(out_of_range.unwrap(), "");
    }

    #[test]
    fn invalid_templates_are_refused_naming_the_resource_and_the_problem() {
        let refuse = |body: &str, kind: Kind, expect: &str| {
            let e = Template::parse(body, kind).unwrap_err();
            assert!(e.0.contains(expect), "{e} should say {expect}");
        };
        refuse("{", Kind::FleetProvisioning, "not valid JSON");
        refuse(
            r#"{"Parameters":{}}"#,
            Kind::FleetProvisioning,
            "no Resources",
        );
        refuse(
            r#"{"Resources":{"t":{"Type":"AWS::S3::Bucket"}}}"#,
            Kind::FleetProvisioning,
            "Resource t has Type AWS::S3::Bucket",
        );
        refuse(
            r#"{"Resources":{"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Ref":"Serial"}}}}}"#,
            Kind::FleetProvisioning,
            "Resource t ThingName refers to Serial",
        );
        refuse(
            r#"{"Resources":{"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Fn::If":["a","b","c"]}}}}}"#,
            Kind::FleetProvisioning,
            "Fn::If, which is not a supported",
        );
        refuse(
            r#"{"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateSigningRequest":"x"}}}}"#,
            Kind::FleetProvisioning,
            "Resource c: a provisioning template's certificate is given by CertificateId",
        );
        refuse(
            r#"{"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{}}}}"#,
            Kind::Registration,
            "Resource c must have exactly one of",
        );
        refuse(
            r#"{"Resources":{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"a","PolicyDocument":"{}"}}}}"#,
            Kind::Registration,
            "Resource p must have exactly one of PolicyName or PolicyDocument",
        );
        refuse(
            r#"{"Resources":{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyDocument":"{\"Statement\":7}"}}}}"#,
            Kind::Registration,
            "Resource p PolicyDocument is not a valid policy",
        );
        refuse(
            r#"{"Resources":{"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":"a"},"OverrideSettings":{"ThingTypeName":"MERGE"}}}}"#,
            Kind::Registration,
            "ThingTypeName cannot be MERGE",
        );
        refuse(
            r#"{"Mappings":{},"Resources":{"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Fn::FindInMap":["M","a","b"]}}}}}"#,
            Kind::Registration,
            "names the mapping M",
        );
        refuse(
            r#"{"Resources":{"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":"a"}}},"DeviceConfiguration":{"nested":{"a":"b"}}}"#,
            Kind::FleetProvisioning,
            "DeviceConfiguration nested must be a string",
        );
    }

    #[test]
    fn jitp_templates_may_use_the_certificate_subject() {
        let body = r#"{
          "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}},
          "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"iot:Connect\",\"Resource\":\"*\"}]}"}}
          }
        }"#;
        let template = Template::parse(body, Kind::Jitp).unwrap();
        let resolved = template
            .resolve(
                &BTreeMap::new(),
                &params(&[
                    (CERTIFICATE_ID, "id"),
                    ("AWS::IoT::Certificate::CommonName", "sensor-7"),
                ]),
            )
            .unwrap();
        assert_eq!(resolved.thing.unwrap().name, "sensor-7");
        assert_eq!(resolved.policies.len(), 1);
    }

    #[test]
    fn pseudo_parameters_come_from_the_provisioning_never_from_the_device() {
        let body = r#"{
          "Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}, "AWS::IoT::Certificate::CommonName": {"Type": "String"}},
          "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}
          }
        }"#;
        let template = Template::parse(body, Kind::Jitp).unwrap();
        let resolved = template
            .resolve(
                &params(&[(CERTIFICATE_ID, "someone-elses")]),
                &params(&[
                    (CERTIFICATE_ID, "mine"),
                    ("AWS::IoT::Certificate::CommonName", "sensor"),
                ]),
            )
            .unwrap();
        assert!(resolved.provisions_only("mine"));
        assert_eq!(resolved.thing.unwrap().name, "sensor");
    }

    #[test]
    fn sub_takes_its_own_variables_and_escapes() {
        let body = r#"{"Parameters":{"A":{"Type":"String"}},"Resources":{"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Fn::Sub":["${A}-${B}-${!C}",{"B":{"Ref":"A"}}]}}}}}"#;
        let template = Template::parse(body, Kind::Registration).unwrap();
        let resolved = template
            .resolve(&params(&[("A", "x")]), &BTreeMap::new())
            .unwrap();
        assert_eq!(resolved.thing.unwrap().name, "x-x-${C}");
    }
}
