//! Certificates (`/keys-and-certificate`, `/certificates`, `/certificate/register*`), CA
//! certificates (`/cacertificate*`) and the principals of things (`/things/{name}/principals`,
//! `/principals/things`).

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, ControlPlane};
use crate::api::error::AwsError;
use crate::api::request::{ApiRequest, with_token};
use crate::services::certs::{
    AutoRegistration, CaCertificateRecord, CaStatus, CertificateMode, CertificateRecord,
    CertificateStatus, NewCaCertificate, RegistrationConfig,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FromCsr {
    certificate_signing_request: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Register {
    certificate_pem: String,
    ca_certificate_pem: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RegistrationConfigBody {
    template_body: Option<String>,
    template_name: Option<String>,
    role_arn: Option<String>,
}

impl From<RegistrationConfigBody> for RegistrationConfig {
    fn from(body: RegistrationConfigBody) -> Self {
        Self {
            template_body: body.template_body,
            template_name: body.template_name,
            role_arn: body.role_arn,
        }
    }
}

fn registration_config_json(config: &RegistrationConfig) -> Value {
    let mut out = json!({});
    if let Some(body) = &config.template_body {
        out["templateBody"] = json!(body);
    }
    if let Some(name) = &config.template_name {
        out["templateName"] = json!(name);
    }
    if let Some(role) = &config.role_arn {
        out["roleArn"] = json!(role);
    }
    out
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RegisterCa {
    ca_certificate: String,
    verification_certificate: Option<String>,
    certificate_mode: Option<String>,
    registration_config: Option<RegistrationConfigBody>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateCa {
    registration_config: Option<RegistrationConfigBody>,
    remove_auto_registration: Option<bool>,
}

fn status(field: &str, name: &str) -> Result<CertificateStatus, AwsError> {
    // PENDING_ACTIVATION is the provisioning's to give, not a caller's.
    CertificateStatus::parse(name)
        .filter(|s| *s != CertificateStatus::PendingActivation)
        .ok_or_else(|| {
            AwsError::validation(
                field,
                name,
                &format!(
                    "Member must satisfy enum value set: {}",
                    CertificateStatus::NAMES
                ),
            )
        })
}

/// The status a new certificate starts in: `setAsActive` in the query, or `status`.
fn initial_status(
    request: &ApiRequest,
    given: Option<&str>,
) -> Result<CertificateStatus, AwsError> {
    if request.query_flag("setAsActive")? {
        return Ok(CertificateStatus::Active);
    }
    match given {
        None => Ok(CertificateStatus::Inactive),
        Some(s) => status("status", s),
    }
}

/// The principal of a request, from `x-amzn-principal`.
fn principal(request: &ApiRequest) -> Result<&str, AwsError> {
    request
        .header("x-amzn-principal")
        .ok_or_else(|| AwsError::invalid_request("The principal (x-amzn-principal) is required"))
}

impl ControlPlane {
    fn certificate_created(&self, record: &CertificateRecord) -> Value {
        json!({
            "certificateArn": self.certs.arn(&record.certificate_id),
            "certificateId": record.certificate_id,
        })
    }

    pub(super) async fn create_keys_and_certificate(&self, request: &ApiRequest) -> ApiResult {
        let status = initial_status(request, None)?;
        let (record, keys) = self.certs.create_keys_and_certificate(status).await?;
        let mut answer = self.certificate_created(&record);
        answer["certificatePem"] = json!(record.certificate_pem);
        answer["keyPair"] = json!({
            "PublicKey": keys.public_key_pem,
            "PrivateKey": keys.private_key_pem,
        });
        Ok(answer)
    }

    pub(super) async fn create_certificate_from_csr(&self, request: &ApiRequest) -> ApiResult {
        let status = initial_status(request, None)?;
        let body: FromCsr = request.json()?;
        let record = self
            .certs
            .create_from_csr(&body.certificate_signing_request, status)
            .await?;
        let mut answer = self.certificate_created(&record);
        answer["certificatePem"] = json!(record.certificate_pem);
        Ok(answer)
    }

    pub(super) async fn register_certificate(&self, request: &ApiRequest) -> ApiResult {
        let body: Register = request.json()?;
        let status = initial_status(request, body.status.as_deref())?;
        let record = self
            .certs
            .register(
                body.certificate_pem,
                body.ca_certificate_pem.as_deref(),
                status,
            )
            .await?;
        Ok(self.certificate_created(&record))
    }

    pub(super) async fn register_certificate_without_ca(&self, request: &ApiRequest) -> ApiResult {
        let body: Register = request.json()?;
        let status = initial_status(request, body.status.as_deref())?;
        let record = self
            .certs
            .register_without_ca(body.certificate_pem, status)
            .await?;
        Ok(self.certificate_created(&record))
    }

    pub(super) async fn describe_certificate(&self, id: &str) -> ApiResult {
        let c = self.certs.certificate(id).await?;
        let mut description = json!({
            "certificateArn": self.certs.arn(&c.certificate_id),
            "certificateId": c.certificate_id,
            "status": c.status.as_str(),
            "certificatePem": c.certificate_pem,
            "ownedBy": self.config.account_id,
            "creationDate": c.creation_date,
            "lastModifiedDate": c.last_modified_date,
            "customerVersion": c.customer_version,
            "generationId": c.generation_id,
            "validity": { "notBefore": c.not_before, "notAfter": c.not_after },
            "certificateMode": c.certificate_mode.as_str(),
            "transferData": {},
        });
        if let Some(ca) = &c.ca_certificate_id {
            description["caCertificateId"] = json!(ca);
        }
        Ok(json!({ "certificateDescription": description }))
    }

    pub(super) async fn list_certificates(
        &self,
        request: &ApiRequest,
        by_ca: Option<&str>,
    ) -> ApiResult {
        let page = request.marker_page()?;
        let (certificates, next) = self.certs.list(by_ca, &page).await?;
        let summaries: Vec<Value> = certificates
            .iter()
            .map(|c| {
                json!({
                    "certificateArn": self.certs.arn(&c.certificate_id),
                    "certificateId": c.certificate_id,
                    "status": c.status.as_str(),
                    "certificateMode": c.certificate_mode.as_str(),
                    "creationDate": c.creation_date,
                })
            })
            .collect();
        Ok(with_token(
            json!({ "certificates": summaries }),
            "nextMarker",
            next,
        ))
    }

    pub(super) async fn update_certificate(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let new_status = request
            .query("newStatus")
            .ok_or_else(|| AwsError::invalid_request("newStatus is required"))?;
        let new_status = status("newStatus", new_status)?;
        self.certs.update_status(id, new_status).await?;
        Ok(json!({}))
    }

    pub(super) async fn delete_certificate(&self, id: &str, _request: &ApiRequest) -> ApiResult {
        self.certs.delete(id).await?;
        Ok(json!({}))
    }

    pub(super) async fn register_ca_certificate(&self, request: &ApiRequest) -> ApiResult {
        let body: RegisterCa = request.json()?;
        let mode = match body.certificate_mode.as_deref() {
            None | Some("DEFAULT") => CertificateMode::Default,
            Some("SNI_ONLY") => CertificateMode::SniOnly,
            Some(other) => {
                return Err(AwsError::validation(
                    "certificateMode",
                    other,
                    "Member must satisfy enum value set: [DEFAULT, SNI_ONLY]",
                ));
            }
        };
        let registration_config = body.registration_config.map(RegistrationConfig::from);
        if let Some(config) = &registration_config {
            self.provisioning.check_registration_config(config).await?;
        }
        let record = self
            .certs
            .register_ca(NewCaCertificate {
                certificate_pem: body.ca_certificate,
                verification_certificate_pem: body.verification_certificate,
                mode,
                active: request.query_flag("setAsActive")?,
                auto_registration: request.query_flag("allowAutoRegistration")?,
                registration_config,
            })
            .await?;
        self.provisioning.forget_jit_cas();
        Ok(json!({
            "certificateArn": self.certs.ca_arn(&record.certificate_id),
            "certificateId": record.certificate_id,
        }))
    }

    pub(super) async fn describe_ca_certificate(&self, id: &str) -> ApiResult {
        let c = self.certs.ca_certificate(id).await?;
        let mut answer = json!({});
        if let Some(config) = &c.registration_config {
            answer["registrationConfig"] = registration_config_json(config);
        }
        answer["certificateDescription"] = json!({
                "certificateArn": self.certs.ca_arn(&c.certificate_id),
                "certificateId": c.certificate_id,
                "status": c.status.as_str(),
                "certificatePem": c.certificate_pem,
                "ownedBy": self.config.account_id,
                "creationDate": c.creation_date,
                "autoRegistrationStatus": c.auto_registration_status.as_str(),
                "lastModifiedDate": c.last_modified_date,
                "customerVersion": c.customer_version,
                "generationId": c.generation_id,
                "validity": { "notBefore": c.not_before, "notAfter": c.not_after },
                "certificateMode": c.certificate_mode.as_str(),
        });
        Ok(answer)
    }

    pub(super) async fn list_ca_certificates(&self, request: &ApiRequest) -> ApiResult {
        let page = request.marker_page()?;
        let (cas, next) = self.certs.list_cas(&page).await?;
        let summaries: Vec<Value> = cas
            .iter()
            .map(|c: &CaCertificateRecord| {
                json!({
                    "certificateArn": self.certs.ca_arn(&c.certificate_id),
                    "certificateId": c.certificate_id,
                    "status": c.status.as_str(),
                    "creationDate": c.creation_date,
                })
            })
            .collect();
        Ok(with_token(
            json!({ "certificates": summaries }),
            "nextMarker",
            next,
        ))
    }

    pub(super) async fn update_ca_certificate(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let status = match request.query("newStatus") {
            None => None,
            Some("ACTIVE") => Some(CaStatus::Active),
            Some("INACTIVE") => Some(CaStatus::Inactive),
            Some(other) => {
                return Err(AwsError::validation(
                    "newStatus",
                    other,
                    "Member must satisfy enum value set: [ACTIVE, INACTIVE]",
                ));
            }
        };
        let auto_registration = match request.query("newAutoRegistrationStatus") {
            None => None,
            Some("ENABLE") => Some(AutoRegistration::Enable),
            Some("DISABLE") => Some(AutoRegistration::Disable),
            Some(other) => {
                return Err(AwsError::validation(
                    "newAutoRegistrationStatus",
                    other,
                    "Member must satisfy enum value set: [ENABLE, DISABLE]",
                ));
            }
        };
        let body: UpdateCa = request.json()?;
        let mut registration_config = body.registration_config.map(RegistrationConfig::from);
        let mut auto_registration = auto_registration;
        if body.remove_auto_registration == Some(true) {
            auto_registration = Some(AutoRegistration::Disable);
            registration_config = Some(RegistrationConfig::default());
        }
        if let Some(config) = &registration_config
            && !config.is_empty()
        {
            self.provisioning.check_registration_config(config).await?;
        }
        self.certs
            .update_ca(id, status, auto_registration, registration_config)
            .await?;
        self.provisioning.forget_jit_cas();
        Ok(json!({}))
    }

    pub(super) async fn delete_ca_certificate(&self, id: &str) -> ApiResult {
        self.certs.delete_ca(id).await?;
        Ok(json!({}))
    }

    pub(super) async fn attach_thing_principal(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        self.registry
            .attach_principal(thing, principal(request)?)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn detach_thing_principal(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        self.registry
            .detach_principal(thing, principal(request)?)
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn list_thing_principals(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        let page = request.page(25, 250)?;
        let (principals, next) = self.registry.principals_of(thing, &page).await?;
        Ok(with_token(
            json!({ "principals": principals }),
            "nextToken",
            next,
        ))
    }

    pub(super) async fn list_principal_things(&self, request: &ApiRequest) -> ApiResult {
        let page = request.page(25, 250)?;
        let (things, next) = self
            .registry
            .things_of_principal(principal(request)?, &page)
            .await?;
        Ok(with_token(json!({ "things": things }), "nextToken", next))
    }
}
