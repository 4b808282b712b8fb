//! Provisioning templates' records: each with up to five versions of its body, one the
//! default, checked whole when saved; its type (fleet provisioning or JITP), whether it is
//! enabled, and its pre-provisioning hook.

use halyard_raft::Op;
use serde::{Deserialize, Serialize};

use super::template::{Kind as TemplateKind, Template};
use crate::clock::epoch_seconds_fraction;
use crate::services::arn::{Arns, Kind};
use crate::services::error::{Error, Result};
use crate::services::records::{Batch, Page, Records, Versioned};
use crate::store::keys;

/// Versions a template keeps at most.
pub const MAX_VERSIONS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateType {
    #[serde(rename = "FLEET_PROVISIONING")]
    FleetProvisioning,
    #[serde(rename = "JITP")]
    Jitp,
}

impl TemplateType {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "FLEET_PROVISIONING" => Ok(Self::FleetProvisioning),
            "JITP" => Ok(Self::Jitp),
            other => Err(Error::validation(
                "type",
                other,
                "Member must satisfy enum value set: [FLEET_PROVISIONING, JITP]",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FleetProvisioning => "FLEET_PROVISIONING",
            Self::Jitp => "JITP",
        }
    }

    pub fn kind(self) -> TemplateKind {
        match self {
            Self::FleetProvisioning => TemplateKind::FleetProvisioning,
            Self::Jitp => TemplateKind::Jitp,
        }
    }
}

/// A webhook asked before a device is provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub target_arn: String,
    pub payload_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub provisioning_role_arn: String,
    pub pre_provisioning_hook: Option<Hook>,
    pub template_type: TemplateType,
    pub default_version_id: u32,
    /// The highest version id given out; ids are never reused.
    pub last_version_id: u32,
    pub creation_date: f64,
    pub last_modified_date: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version_id: u32,
    pub template_body: String,
    pub creation_date: f64,
}

/// CreateProvisioningTemplate's request.
pub struct NewTemplate {
    pub name: String,
    pub description: Option<String>,
    pub body: String,
    pub enabled: bool,
    pub provisioning_role_arn: String,
    pub pre_provisioning_hook: Option<Hook>,
    pub template_type: TemplateType,
}

/// UpdateProvisioningTemplate's request.
#[derive(Default)]
pub struct TemplateUpdate {
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub default_version_id: Option<u32>,
    pub provisioning_role_arn: Option<String>,
    pub pre_provisioning_hook: Option<Hook>,
    pub remove_pre_provisioning_hook: bool,
}

pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 36
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::validation(
            "templateName",
            name,
            "Member must have length between 1 and 36 and satisfy regular expression pattern: ^[0-9A-Za-z_-]+$",
        ));
    }
    Ok(())
}

fn check_description(description: Option<&str>) -> Result<()> {
    if let Some(d) = description
        && d.len() > 500
    {
        return Err(Error::validation(
            "description",
            d,
            "Member must have length less than or equal to 500",
        ));
    }
    Ok(())
}

fn check_role(role: &str) -> Result<()> {
    if role.len() < 20 || role.len() > 2048 {
        return Err(Error::validation(
            "provisioningRoleArn",
            role,
            "Member must have length between 20 and 2048",
        ));
    }
    Ok(())
}

/// Halyard calls a hook as a webhook: its target is the URL AWS would have a Lambda ARN for.
pub fn check_hook(hook: &Hook) -> Result<()> {
    if !(hook.target_arn.starts_with("https://") || hook.target_arn.starts_with("http://")) {
        return Err(Error::invalid(format!(
            "preProvisioningHook.targetArn {} must be the http(s) URL of the hook: Halyard calls pre-provisioning hooks as webhooks",
            hook.target_arn
        )));
    }
    if hook.payload_version.is_empty()
        || !hook
            .payload_version
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::validation(
            "preProvisioningHook.payloadVersion",
            &hook.payload_version,
            "Member must satisfy regular expression pattern: ^[0-9-]+$",
        ));
    }
    Ok(())
}

/// Parses `body` as a template of `kind`, refusing it in AWS's words.
pub fn parse_body(body: &str, kind: TemplateKind) -> Result<Template> {
    Template::parse(body, kind).map_err(|e| Error::invalid(format!("Invalid template: {e}")))
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("The provisioning template {name} does not exist"))
}

fn changed_meanwhile(name: &str) -> Error {
    Error::conflict(format!(
        "The provisioning template {name} changed meanwhile; retry."
    ))
}

/// The provisioning templates of the account.
#[derive(Clone)]
pub struct Templates {
    records: Records,
    arns: Arns,
}

impl Templates {
    pub fn new(records: Records, arns: Arns) -> Self {
        Self { records, arns }
    }

    pub fn arn(&self, name: &str) -> String {
        self.arns.of(Kind::ProvisioningTemplate, name)
    }

    async fn versioned(&self, name: &str) -> Result<Versioned<TemplateRecord>> {
        check_name(name)?;
        self.records
            .get::<TemplateRecord>(&keys::provisioning_template(name))
            .await?
            .ok_or_else(|| not_found(name))
    }

    /// CreateProvisioningTemplate: the template and its first version, the default.
    pub async fn create(&self, new: NewTemplate) -> Result<TemplateRecord> {
        check_name(&new.name)?;
        check_description(new.description.as_deref())?;
        check_role(&new.provisioning_role_arn)?;
        if let Some(hook) = &new.pre_provisioning_hook {
            check_hook(hook)?;
            if new.template_type == TemplateType::Jitp {
                return Err(Error::invalid(
                    "A JITP template cannot have a pre-provisioning hook",
                ));
            }
        }
        parse_body(&new.body, new.template_type.kind())?;
        let now = epoch_seconds_fraction();
        let record = TemplateRecord {
            name: new.name.clone(),
            description: new.description,
            enabled: new.enabled,
            provisioning_role_arn: new.provisioning_role_arn,
            pre_provisioning_hook: new.pre_provisioning_hook,
            template_type: new.template_type,
            default_version_id: 1,
            last_version_id: 1,
            creation_date: now,
            last_modified_date: now,
        };
        let key = keys::provisioning_template(&new.name);
        let mut batch = Batch::default();
        batch.read(&key, 0);
        batch.put(&key, &record)?;
        batch.put(
            &keys::provisioning_template_version(&new.name, 1),
            &VersionRecord {
                version_id: 1,
                template_body: new.body,
                creation_date: now,
            },
        )?;
        if !self.records.commit(batch).await? {
            return Err(Error::already_exists(
                format!("The provisioning template {} already exists", new.name),
                new.name.as_str(),
                self.arn(&new.name),
            ));
        }
        Ok(record)
    }

    /// The template `name` and its default version.
    pub async fn describe(&self, name: &str) -> Result<(TemplateRecord, VersionRecord)> {
        let template = self.versioned(name).await?.value;
        let version = self
            .version_record(name, template.default_version_id)
            .await?;
        Ok((template, version))
    }

    /// The template `name` and the body devices are provisioned with, parsed.
    pub async fn usable(&self, name: &str) -> Result<(TemplateRecord, Template)> {
        let (template, version) = self.describe(name).await?;
        let body = parse_body(&version.template_body, template.template_type.kind())?;
        Ok((template, body))
    }

    async fn versioned_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Versioned<VersionRecord>> {
        self.records
            .get::<VersionRecord>(&keys::provisioning_template_version(name, version))
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "The provisioning template {name} has no version {version}"
                ))
            })
    }

    async fn version_record(&self, name: &str, version: u32) -> Result<VersionRecord> {
        Ok(self.versioned_version(name, version).await?.value)
    }

    async fn version_records(&self, name: &str) -> Result<Vec<VersionRecord>> {
        Ok(Page::first(MAX_VERSIONS + 1)
            .collect(
                &self.records,
                &keys::provisioning_template_versions(name),
                |_: &VersionRecord| true,
            )
            .await?
            .0)
    }

    /// UpdateProvisioningTemplate.
    pub async fn update(&self, name: &str, update: TemplateUpdate) -> Result<()> {
        check_description(update.description.as_deref())?;
        if let Some(role) = &update.provisioning_role_arn {
            check_role(role)?;
        }
        if let Some(hook) = &update.pre_provisioning_hook {
            check_hook(hook)?;
        }
        let current = self.versioned(name).await?;
        let mut template = current.value;
        let key = keys::provisioning_template(name);
        let mut batch = Batch::default();
        batch.read(&key, current.mod_revision);
        if let Some(version) = update.default_version_id {
            let version_key = keys::provisioning_template_version(name, version);
            let found = self
                .records
                .get::<VersionRecord>(&version_key)
                .await?
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "The provisioning template {name} has no version {version}"
                    ))
                })?;
            batch.read(&version_key, found.mod_revision);
            template.default_version_id = version;
        }
        if let Some(description) = update.description {
            template.description = Some(description);
        }
        if let Some(enabled) = update.enabled {
            template.enabled = enabled;
        }
        if let Some(role) = update.provisioning_role_arn {
            template.provisioning_role_arn = role;
        }
        if update.remove_pre_provisioning_hook {
            template.pre_provisioning_hook = None;
        } else if let Some(hook) = update.pre_provisioning_hook {
            if template.template_type == TemplateType::Jitp {
                return Err(Error::invalid(
                    "A JITP template cannot have a pre-provisioning hook",
                ));
            }
            template.pre_provisioning_hook = Some(hook);
        }
        template.last_modified_date = epoch_seconds_fraction();
        batch.put(&key, &template)?;
        if !self.records.commit(batch).await? {
            return Err(changed_meanwhile(name));
        }
        Ok(())
    }

    /// DeleteProvisioningTemplate: with its versions; refused while a CA's registration
    /// config names it.
    pub async fn delete(&self, name: &str, used_by_ca: Option<&str>) -> Result<()> {
        let current = self.versioned(name).await?;
        if let Some(ca) = used_by_ca {
            return Err(Error::DeleteConflict(format!(
                "The provisioning template {name} is used by the registration config of CA certificate {ca}"
            )));
        }
        let key = keys::provisioning_template(name);
        let mut batch = Batch::default();
        batch.read(&key, current.mod_revision);
        batch.ops([Op::delete(key.clone())]);
        for version in self.version_records(name).await? {
            batch.ops([Op::delete(keys::provisioning_template_version(
                name,
                version.version_id,
            ))]);
        }
        if !self.records.commit(batch).await? {
            return Err(changed_meanwhile(name));
        }
        Ok(())
    }

    /// ListProvisioningTemplates.
    pub async fn list(&self, page: &Page) -> Result<(Vec<TemplateRecord>, Option<String>)> {
        page.collect(
            &self.records,
            keys::PROVISIONING_TEMPLATES,
            |_: &TemplateRecord| true,
        )
        .await
    }

    /// CreateProvisioningTemplateVersion: the new version, and whether it is the default.
    pub async fn create_version(
        &self,
        name: &str,
        body: String,
        set_as_default: bool,
    ) -> Result<(VersionRecord, bool)> {
        let current = self.versioned(name).await?;
        let mut template = current.value;
        parse_body(&body, template.template_type.kind())?;
        let versions = self.version_records(name).await?;
        if versions.len() >= MAX_VERSIONS {
            return Err(Error::VersionsLimitExceeded(format!(
                "The provisioning template {name} has {MAX_VERSIONS} versions, the most it can have; delete one first"
            )));
        }
        let now = epoch_seconds_fraction();
        template.last_version_id += 1;
        let version = VersionRecord {
            version_id: template.last_version_id,
            template_body: body,
            creation_date: now,
        };
        if set_as_default {
            template.default_version_id = version.version_id;
        }
        template.last_modified_date = now;
        let key = keys::provisioning_template(name);
        let mut batch = Batch::default();
        batch.read(&key, current.mod_revision);
        batch.put(&key, &template)?;
        batch.put(
            &keys::provisioning_template_version(name, version.version_id),
            &version,
        )?;
        if !self.records.commit(batch).await? {
            return Err(changed_meanwhile(name));
        }
        Ok((version, set_as_default))
    }

    /// DescribeProvisioningTemplateVersion: the version, and whether it is the default.
    pub async fn version(&self, name: &str, version: u32) -> Result<(VersionRecord, bool)> {
        let template = self.versioned(name).await?.value;
        let record = self.version_record(name, version).await?;
        Ok((record, template.default_version_id == version))
    }

    /// ListProvisioningTemplateVersions, with the default version's id.
    pub async fn versions(&self, name: &str) -> Result<(Vec<VersionRecord>, u32)> {
        let template = self.versioned(name).await?.value;
        Ok((
            self.version_records(name).await?,
            template.default_version_id,
        ))
    }

    /// DeleteProvisioningTemplateVersion: never the default.
    pub async fn delete_version(&self, name: &str, version: u32) -> Result<()> {
        let current = self.versioned(name).await?;
        if current.value.default_version_id == version {
            return Err(Error::DeleteConflict(format!(
                "Version {version} is the default version of the provisioning template {name}; make another the default first"
            )));
        }
        let version_key = keys::provisioning_template_version(name, version);
        let found = self.versioned_version(name, version).await?;
        let key = keys::provisioning_template(name);
        let mut batch = Batch::default();
        batch.read(&key, current.mod_revision);
        batch.read(&version_key, found.mod_revision);
        batch.ops([Op::delete(version_key.clone())]);
        if !self.records.commit(batch).await? {
            return Err(changed_meanwhile(name));
        }
        Ok(())
    }
}
