//! Certificates and CA certificates in the registry, and the principals attached to things.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::AwsError;
use super::pki;
use super::request::{ApiRequest, Page};
use super::things::{check_name, now_seconds, uuid_v4, with_token};
use super::{Api, ApiResult};

use crate::store::keys;

pub(super) const CERTIFICATES: &str = keys::CERTIFICATES;
const CA_CERTIFICATES: &str = keys::CA_CERTIFICATES;
pub(super) const THING_PRINCIPALS: &str = keys::THING_PRINCIPALS;
const STATUSES: [&str; 4] = ["ACTIVE", "INACTIVE", "REVOKED", "REGISTER_INACTIVE"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateRecord {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub ca_certificate_id: Option<String>,
    pub status: String,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub generation_id: String,
    pub customer_version: u64,
    pub not_before: i64,
    pub not_after: i64,
    pub certificate_mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaCertificateRecord {
    pub certificate_id: String,
    pub certificate_pem: String,
    pub status: String,
    pub auto_registration_status: String,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub generation_id: String,
    pub customer_version: u64,
    pub not_before: i64,
    pub not_after: i64,
    pub certificate_mode: String,
}

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
struct RegisterCa {
    ca_certificate: String,
    verification_certificate: Option<String>,
    certificate_mode: Option<String>,
}

pub(super) fn certificate_key(id: &str) -> String {
    keys::certificate(id)
}

pub(super) fn ca_key(id: &str) -> String {
    keys::ca_certificate(id)
}

fn thing_principal_key(thing: &str, principal: &str) -> String {
    keys::thing_principal(thing, principal)
}

fn principal_thing_key(principal: &str, thing: &str) -> String {
    keys::principal_thing(principal, thing)
}

fn check_certificate_id(id: &str) -> Result<(), AwsError> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AwsError::validation(
            "certificateId",
            id,
            "Member must have length 64 and satisfy regular expression pattern: (0x)?[a-fA-F0-9]+",
        ));
    }
    Ok(())
}

fn invalid_pem(e: pki::PkiError) -> AwsError {
    AwsError::certificate_validation(e.to_string())
}

impl Api {
    fn certificate_arn(&self, id: &str) -> String {
        self.arn(&format!("cert/{id}"))
    }

    /// The status a new certificate starts in: `setAsActive` in the query, or `status`.
    fn initial_status(request: &ApiRequest, status: Option<&str>) -> Result<String, AwsError> {
        if request.query_flag("setAsActive")? {
            return Ok("ACTIVE".into());
        }
        match status {
            None => Ok("INACTIVE".into()),
            Some(s) if STATUSES.contains(&s) => Ok(s.to_owned()),
            Some(s) => Err(AwsError::validation(
                "status",
                s,
                "Member must satisfy enum value set: [ACTIVE, INACTIVE, REVOKED, REGISTER_INACTIVE]",
            )),
        }
    }

    fn new_record(
        &self,
        parsed: &pki::ParsedCertificate,
        pem: String,
        ca: Option<String>,
        status: String,
        mode: &str,
    ) -> CertificateRecord {
        let now = now_seconds();
        CertificateRecord {
            certificate_id: parsed.id.clone(),
            certificate_pem: pem,
            ca_certificate_id: ca,
            status,
            creation_date: now,
            last_modified_date: now,
            generation_id: uuid_v4(),
            customer_version: 1,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            certificate_mode: mode.to_owned(),
        }
    }

    async fn store_new_certificate(&self, record: &CertificateRecord) -> Result<(), AwsError> {
        if self
            .records
            .create(&certificate_key(&record.certificate_id), record)
            .await?
        {
            Ok(())
        } else {
            Err(AwsError::already_exists(
                format!(
                    "The certificate is already provisioned or registered: {}",
                    record.certificate_id
                ),
                record.certificate_id.as_str(),
                self.certificate_arn(&record.certificate_id),
            ))
        }
    }

    fn halyard_ca_id(&self) -> Result<String, AwsError> {
        pki::parse(&self.ca.certificate_pem)
            .map(|p| p.id)
            .map_err(|e| AwsError::internal(format!("Halyard's CA is unreadable: {e}")))
    }

    pub(super) async fn create_keys_and_certificate(&self, request: &ApiRequest) -> ApiResult {
        let status = Self::initial_status(request, None)?;
        let keys = pki::issue_device(&self.ca).map_err(|e| AwsError::internal(e.to_string()))?;
        let parsed =
            pki::parse(&keys.certificate_pem).map_err(|e| AwsError::internal(e.to_string()))?;
        let record = self.new_record(
            &parsed,
            keys.certificate_pem.clone(),
            Some(self.halyard_ca_id()?),
            status,
            "DEFAULT",
        );
        self.store_new_certificate(&record).await?;
        Ok(json!({
            "certificateArn": self.certificate_arn(&parsed.id),
            "certificateId": parsed.id,
            "certificatePem": keys.certificate_pem,
            "keyPair": {
                "PublicKey": keys.public_key_pem,
                "PrivateKey": keys.private_key_pem,
            },
        }))
    }

    pub(super) async fn create_certificate_from_csr(&self, request: &ApiRequest) -> ApiResult {
        let status = Self::initial_status(request, None)?;
        let body: FromCsr = request.json()?;
        if body.certificate_signing_request.is_empty() {
            return Err(AwsError::invalid_request(
                "certificateSigningRequest is required",
            ));
        }
        let pem = pki::issue_from_csr(&self.ca, &body.certificate_signing_request)
            .map_err(|e| AwsError::invalid_request(e.to_string()))?;
        let parsed = pki::parse(&pem).map_err(|e| AwsError::internal(e.to_string()))?;
        let record = self.new_record(
            &parsed,
            pem.clone(),
            Some(self.halyard_ca_id()?),
            status,
            "DEFAULT",
        );
        self.store_new_certificate(&record).await?;
        Ok(json!({
            "certificateArn": self.certificate_arn(&parsed.id),
            "certificateId": parsed.id,
            "certificatePem": pem,
        }))
    }

    /// The registered, active CA that signed `certificate`: Halyard's own, or one registered.
    async fn issuing_ca(
        &self,
        certificate: &pki::ParsedCertificate,
        named: Option<&str>,
    ) -> Result<String, AwsError> {
        let own =
            pki::parse(&self.ca.certificate_pem).map_err(|e| AwsError::internal(e.to_string()))?;
        if named.is_none() && pki::signed_by(&certificate.der, &own.der) {
            return Ok(own.id);
        }
        let candidates: Vec<CaCertificateRecord> = match named {
            Some(pem) => {
                let ca = pki::parse(pem).map_err(invalid_pem)?;
                if ca.id == own.id {
                    if pki::signed_by(&certificate.der, &own.der) {
                        return Ok(own.id);
                    }
                    return Err(AwsError::certificate_validation(
                        "The certificate is not signed by the given CA certificate",
                    ));
                }
                let record = self
                    .records
                    .get::<CaCertificateRecord>(&ca_key(&ca.id))
                    .await?
                    .ok_or_else(|| {
                        AwsError::not_found(format!("CA certificate {} is not registered", ca.id))
                    })?;
                vec![record.value]
            }
            None => {
                Page::first(1000)
                    .collect(&self.records, CA_CERTIFICATES, |_: &CaCertificateRecord| {
                        true
                    })
                    .await?
                    .0
            }
        };
        for ca in candidates {
            let Ok(parsed) = pki::parse(&ca.certificate_pem) else {
                continue;
            };
            if pki::signed_by(&certificate.der, &parsed.der) {
                if ca.status != "ACTIVE" {
                    return Err(AwsError::certificate_state(format!(
                        "The CA certificate {} is not active",
                        ca.certificate_id
                    )));
                }
                return Ok(ca.certificate_id);
            }
        }
        Err(AwsError::certificate_validation(
            "The certificate is not signed by a registered CA certificate",
        ))
    }

    pub(super) async fn register_certificate(&self, request: &ApiRequest) -> ApiResult {
        let body: Register = request.json()?;
        let status = Self::initial_status(request, body.status.as_deref())?;
        let parsed = pki::parse(&body.certificate_pem).map_err(invalid_pem)?;
        let ca = self
            .issuing_ca(&parsed, body.ca_certificate_pem.as_deref())
            .await?;
        let record = self.new_record(&parsed, body.certificate_pem, Some(ca), status, "DEFAULT");
        self.store_new_certificate(&record).await?;
        Ok(json!({
            "certificateArn": self.certificate_arn(&parsed.id),
            "certificateId": parsed.id,
        }))
    }

    pub(super) async fn register_certificate_without_ca(&self, request: &ApiRequest) -> ApiResult {
        let body: Register = request.json()?;
        let status = Self::initial_status(request, body.status.as_deref())?;
        let parsed = pki::parse(&body.certificate_pem).map_err(invalid_pem)?;
        let record = self.new_record(&parsed, body.certificate_pem, None, status, "SNI_ONLY");
        self.store_new_certificate(&record).await?;
        Ok(json!({
            "certificateArn": self.certificate_arn(&parsed.id),
            "certificateId": parsed.id,
        }))
    }

    async fn certificate(
        &self,
        id: &str,
    ) -> Result<super::records::Versioned<CertificateRecord>, AwsError> {
        check_certificate_id(id)?;
        self.records
            .get::<CertificateRecord>(&certificate_key(id))
            .await?
            .ok_or_else(|| AwsError::not_found(format!("The certificate {id} does not exist")))
    }

    pub(super) async fn describe_certificate(&self, id: &str) -> ApiResult {
        let c = self.certificate(id).await?.value;
        let mut description = json!({
            "certificateArn": self.certificate_arn(&c.certificate_id),
            "certificateId": c.certificate_id,
            "status": c.status,
            "certificatePem": c.certificate_pem,
            "ownedBy": self.config.account_id,
            "creationDate": c.creation_date,
            "lastModifiedDate": c.last_modified_date,
            "customerVersion": c.customer_version,
            "generationId": c.generation_id,
            "validity": { "notBefore": c.not_before, "notAfter": c.not_after },
            "certificateMode": c.certificate_mode,
            "transferData": {},
        });
        if let Some(ca) = &c.ca_certificate_id {
            description["caCertificateId"] = json!(ca);
        }
        Ok(json!({ "certificateDescription": description }))
    }

    fn certificate_summary(&self, c: &CertificateRecord) -> Value {
        json!({
            "certificateArn": self.certificate_arn(&c.certificate_id),
            "certificateId": c.certificate_id,
            "status": c.status,
            "certificateMode": c.certificate_mode,
            "creationDate": c.creation_date,
        })
    }

    /// `pageSize`, `marker` and `ascendingOrder`, as the certificate listings take them.
    pub(super) fn marker_page(request: &ApiRequest) -> Result<Page, AwsError> {
        let mut renamed = Vec::new();
        for (k, v) in &request.query {
            match k.as_str() {
                "pageSize" => renamed.push(("maxResults".to_owned(), v.clone())),
                "marker" => renamed.push(("nextToken".to_owned(), v.clone())),
                _ => {}
            }
        }
        let view = ApiRequest {
            method: request.method.clone(),
            segments: Vec::new(),
            query: renamed,
            headers: Vec::new(),
            body: Default::default(),
        };
        Page::from_request(&view, 250, 250)
    }

    pub(super) async fn list_certificates(
        &self,
        request: &ApiRequest,
        by_ca: Option<&str>,
    ) -> ApiResult {
        if let Some(ca) = by_ca {
            check_certificate_id(ca)?;
        }
        let page = Self::marker_page(request)?;
        let (certificates, next) = page
            .collect(&self.records, CERTIFICATES, |c: &CertificateRecord| {
                by_ca.is_none_or(|ca| c.ca_certificate_id.as_deref() == Some(ca))
            })
            .await?;
        let mut answer = json!({
            "certificates": certificates.iter().map(|c| self.certificate_summary(c)).collect::<Vec<_>>(),
        });
        if let Some(marker) = next {
            answer["nextMarker"] = json!(marker);
        }
        Ok(answer)
    }

    pub(super) async fn update_certificate(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let new_status = request
            .query("newStatus")
            .ok_or_else(|| AwsError::invalid_request("newStatus is required"))?;
        if !STATUSES.contains(&new_status) {
            return Err(AwsError::validation(
                "newStatus",
                new_status,
                "Member must satisfy enum value set: [ACTIVE, INACTIVE, REVOKED, REGISTER_INACTIVE]",
            ));
        }
        let current = self.certificate(id).await?;
        let mut c = current.value;
        if c.status == "REVOKED" && new_status != "REVOKED" {
            return Err(AwsError::certificate_state(format!(
                "Certificate {id} is revoked and cannot change status"
            )));
        }
        if c.status != new_status {
            c.status = new_status.to_owned();
            c.last_modified_date = now_seconds();
            c.customer_version += 1;
            c.generation_id = uuid_v4();
            if !self
                .records
                .replace(&certificate_key(id), &c, current.mod_revision)
                .await?
            {
                return Err(AwsError::conflicting_update(format!(
                    "Certificate {id} changed meanwhile; retry."
                )));
            }
        }
        Ok(json!({}))
    }

    pub(super) async fn delete_certificate(&self, id: &str, _request: &ApiRequest) -> ApiResult {
        let current = self.certificate(id).await?;
        if current.value.status == "ACTIVE" {
            return Err(AwsError::certificate_state(
                "Certificate must be deactivated (not ACTIVE) before deletion.",
            ));
        }
        let arn = self.certificate_arn(id);
        let (things, _) = Page::first(1)
            .collect(
                &self.records,
                &keys::principal_things(&arn),
                |_: &String| true,
            )
            .await?;
        if !things.is_empty() {
            return Err(AwsError::delete_conflict(
                "Things must be detached before deletion (arn: ".to_owned() + &arn + ")",
            ));
        }
        if !self.policies_of(&arn).await?.is_empty() {
            return Err(AwsError::delete_conflict(format!(
                "Certificate policies must be detached before deletion (arn: {arn})"
            )));
        }
        if !self
            .records
            .delete(&certificate_key(id), current.mod_revision)
            .await?
        {
            return Err(AwsError::conflicting_update(format!(
                "Certificate {id} changed meanwhile; retry."
            )));
        }
        Ok(json!({}))
    }

    pub(super) async fn register_ca_certificate(&self, request: &ApiRequest) -> ApiResult {
        let body: RegisterCa = request.json()?;
        let parsed = pki::parse(&body.ca_certificate).map_err(invalid_pem)?;
        if !parsed.is_ca {
            return Err(AwsError::certificate_validation(
                "The certificate is not a CA certificate (basic constraints CA:TRUE)",
            ));
        }
        if let Some(verification) = &body.verification_certificate {
            let proof = pki::parse(verification).map_err(invalid_pem)?;
            if !pki::signed_by(&proof.der, &parsed.der) {
                return Err(AwsError::certificate_validation(
                    "The verification certificate is not signed by the CA certificate",
                ));
            }
        }
        let mode = body.certificate_mode.unwrap_or_else(|| "DEFAULT".into());
        if mode != "DEFAULT" && mode != "SNI_ONLY" {
            return Err(AwsError::validation(
                "certificateMode",
                &mode,
                "Member must satisfy enum value set: [DEFAULT, SNI_ONLY]",
            ));
        }
        let now = now_seconds();
        let status = if request.query_flag("setAsActive")? {
            "ACTIVE"
        } else {
            "INACTIVE"
        };
        let auto = if request.query_flag("allowAutoRegistration")? {
            "ENABLE"
        } else {
            "DISABLE"
        };
        let record = CaCertificateRecord {
            certificate_id: parsed.id.clone(),
            certificate_pem: body.ca_certificate,
            status: status.into(),
            auto_registration_status: auto.into(),
            creation_date: now,
            last_modified_date: now,
            generation_id: uuid_v4(),
            customer_version: 1,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            certificate_mode: mode,
        };
        if !self.records.create(&ca_key(&parsed.id), &record).await? {
            return Err(AwsError::already_exists(
                format!("The CA certificate is already registered: {}", parsed.id),
                parsed.id.as_str(),
                self.arn(&format!("cacert/{}", parsed.id)),
            ));
        }
        Ok(json!({
            "certificateArn": self.arn(&format!("cacert/{}", parsed.id)),
            "certificateId": parsed.id,
        }))
    }

    async fn ca_certificate(
        &self,
        id: &str,
    ) -> Result<super::records::Versioned<CaCertificateRecord>, AwsError> {
        // An id of the wrong shape names no CA certificate either: AWS answers not found.
        self.records
            .get::<CaCertificateRecord>(&ca_key(id))
            .await?
            .ok_or_else(|| AwsError::not_found(format!("The CA certificate {id} does not exist")))
    }

    pub(super) async fn describe_ca_certificate(&self, id: &str) -> ApiResult {
        let c = self.ca_certificate(id).await?.value;
        Ok(json!({
            "certificateDescription": {
                "certificateArn": self.arn(&format!("cacert/{}", c.certificate_id)),
                "certificateId": c.certificate_id,
                "status": c.status,
                "certificatePem": c.certificate_pem,
                "ownedBy": self.config.account_id,
                "creationDate": c.creation_date,
                "autoRegistrationStatus": c.auto_registration_status,
                "lastModifiedDate": c.last_modified_date,
                "customerVersion": c.customer_version,
                "generationId": c.generation_id,
                "validity": { "notBefore": c.not_before, "notAfter": c.not_after },
                "certificateMode": c.certificate_mode,
            }
        }))
    }

    pub(super) async fn list_ca_certificates(&self, request: &ApiRequest) -> ApiResult {
        let page = Self::marker_page(request)?;
        let (cas, next) = page
            .collect(&self.records, CA_CERTIFICATES, |_: &CaCertificateRecord| {
                true
            })
            .await?;
        let mut answer = json!({
            "certificates": cas.iter().map(|c| json!({
                "certificateArn": self.arn(&format!("cacert/{}", c.certificate_id)),
                "certificateId": c.certificate_id,
                "status": c.status,
                "creationDate": c.creation_date,
            })).collect::<Vec<_>>(),
        });
        if let Some(marker) = next {
            answer["nextMarker"] = json!(marker);
        }
        Ok(answer)
    }

    pub(super) async fn update_ca_certificate(&self, id: &str, request: &ApiRequest) -> ApiResult {
        let current = self.ca_certificate(id).await?;
        let mut c = current.value;
        if let Some(status) = request.query("newStatus") {
            if status != "ACTIVE" && status != "INACTIVE" {
                return Err(AwsError::validation(
                    "newStatus",
                    status,
                    "Member must satisfy enum value set: [ACTIVE, INACTIVE]",
                ));
            }
            c.status = status.to_owned();
        }
        if let Some(auto) = request.query("newAutoRegistrationStatus") {
            if auto != "ENABLE" && auto != "DISABLE" {
                return Err(AwsError::validation(
                    "newAutoRegistrationStatus",
                    auto,
                    "Member must satisfy enum value set: [ENABLE, DISABLE]",
                ));
            }
            c.auto_registration_status = auto.to_owned();
        }
        c.last_modified_date = now_seconds();
        c.customer_version += 1;
        if !self
            .records
            .replace(&ca_key(id), &c, current.mod_revision)
            .await?
        {
            return Err(AwsError::conflicting_update(format!(
                "CA certificate {id} changed meanwhile; retry."
            )));
        }
        Ok(json!({}))
    }

    pub(super) async fn delete_ca_certificate(&self, id: &str) -> ApiResult {
        let current = self.ca_certificate(id).await?;
        if current.value.status == "ACTIVE" {
            return Err(AwsError::certificate_state(
                "A CA certificate must be deactivated (not ACTIVE) before deletion.",
            ));
        }
        let (issued, _) = Page::first(1)
            .collect(&self.records, CERTIFICATES, |c: &CertificateRecord| {
                c.ca_certificate_id.as_deref() == Some(id)
            })
            .await?;
        if !issued.is_empty() {
            return Err(AwsError::certificate_state(
                "The CA certificate still has certificates registered under it.",
            ));
        }
        self.records
            .delete(&ca_key(id), current.mod_revision)
            .await?;
        Ok(json!({}))
    }

    /// The principal of a request (`x-amzn-principal`): a certificate ARN that exists.
    async fn principal(&self, request: &ApiRequest) -> Result<String, AwsError> {
        let principal = request
            .header("x-amzn-principal")
            .ok_or_else(|| {
                AwsError::invalid_request("The principal (x-amzn-principal) is required")
            })?
            .to_owned();
        let prefix = self.arn("cert/");
        let Some(id) = principal.strip_prefix(&prefix) else {
            return Err(AwsError::invalid_request(format!(
                "The principal {principal} is not a certificate ARN of this account and region"
            )));
        };
        self.certificate(id).await?;
        Ok(principal)
    }

    pub(super) async fn attach_thing_principal(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        check_name("thingName", thing)?;
        self.thing(thing).await?;
        let principal = self.principal(request).await?;
        let as_json = |s: &str| json!(s).to_string();
        let txn = halyard_raft::Txn::new().and_then([
            halyard_raft::Op::put(thing_principal_key(thing, &principal), as_json(&principal)),
            halyard_raft::Op::put(principal_thing_key(&principal, thing), as_json(thing)),
        ]);
        self.records.txn(txn).await?;
        Ok(json!({}))
    }

    pub(super) async fn detach_thing_principal(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        check_name("thingName", thing)?;
        let principal = request
            .header("x-amzn-principal")
            .ok_or_else(|| {
                AwsError::invalid_request("The principal (x-amzn-principal) is required")
            })?
            .to_owned();
        self.thing(thing).await?;
        let txn = halyard_raft::Txn::new().and_then([
            halyard_raft::Op::delete(thing_principal_key(thing, &principal)),
            halyard_raft::Op::delete(principal_thing_key(&principal, thing)),
        ]);
        self.records.txn(txn).await?;
        Ok(json!({}))
    }

    pub(super) async fn list_thing_principals(
        &self,
        thing: &str,
        request: &ApiRequest,
    ) -> ApiResult {
        check_name("thingName", thing)?;
        self.thing(thing).await?;
        let page = Page::from_request(request, 25, 250)?;
        let (principals, next) = page
            .collect(
                &self.records,
                &format!("{THING_PRINCIPALS}{thing}/"),
                |_: &String| true,
            )
            .await?;
        Ok(with_token(json!({ "principals": principals }), next))
    }

    pub(super) async fn list_principal_things(&self, request: &ApiRequest) -> ApiResult {
        let principal = self.principal(request).await?;
        let page = Page::from_request(request, 25, 250)?;
        let (things, next) = page
            .collect(
                &self.records,
                &keys::principal_things(&principal),
                |_: &String| true,
            )
            .await?;
        Ok(with_token(json!({ "things": things }), next))
    }

    /// Whether `principal` is attached to `thing`.
    pub(super) async fn principal_has_thing(
        &self,
        principal: &str,
        thing: &str,
    ) -> Result<bool, AwsError> {
        Ok(self
            .records
            .get::<String>(&principal_thing_key(principal, thing))
            .await?
            .is_some())
    }

    /// The thing `principal` is attached to, when it is attached to exactly one.
    pub(super) async fn sole_thing(&self, principal: &str) -> Result<Option<String>, AwsError> {
        let (things, _) = Page::first(2)
            .collect(
                &self.records,
                &keys::principal_things(principal),
                |_: &String| true,
            )
            .await?;
        Ok(match things.as_slice() {
            [thing] => Some(thing.clone()),
            _ => None,
        })
    }

    /// Whether any principal is attached to `thing`.
    pub(super) async fn has_principals(&self, thing: &str) -> Result<bool, AwsError> {
        let (principals, _) = Page::first(1)
            .collect(
                &self.records,
                &format!("{THING_PRINCIPALS}{thing}/"),
                |_: &String| true,
            )
            .await?;
        Ok(!principals.is_empty())
    }
}
