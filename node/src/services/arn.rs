//! The ARNs of this account's resources: `arn:aws:iot:{region}:{account}:{kind}/{name}`.

/// Builds and reads ARNs for one region and account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arns {
    /// `arn:aws:iot:{region}:{account}:`
    prefix: String,
}

/// The kinds of resource an ARN names, as they appear in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Thing,
    ThingType,
    ThingGroup,
    Certificate,
    CaCertificate,
    Policy,
    Authorizer,
    Rule,
    RuleDestination,
    Job,
    JobTemplate,
    ProvisioningTemplate,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::Thing => "thing/",
            Kind::ThingType => "thingtype/",
            Kind::ThingGroup => "thinggroup/",
            Kind::Certificate => "cert/",
            Kind::CaCertificate => "cacert/",
            Kind::Policy => "policy/",
            Kind::Authorizer => "authorizer/",
            Kind::Rule => "rule/",
            Kind::RuleDestination => "ruledestination/http/",
            Kind::Job => "job/",
            Kind::JobTemplate => "jobtemplate/",
            Kind::ProvisioningTemplate => "provisioningtemplate/",
        }
    }
}

impl Arns {
    pub fn new(region: &str, account_id: &str) -> Self {
        Self {
            prefix: format!("arn:aws:iot:{region}:{account_id}:"),
        }
    }

    /// `arn:aws:iot:{region}:{account}:`, the resource part left empty: what policy
    /// resources are matched under.
    pub fn account(&self) -> &str {
        &self.prefix
    }

    pub fn of(&self, kind: Kind, name: &str) -> String {
        let segment = kind.segment();
        let mut arn = String::with_capacity(self.prefix.len() + segment.len() + name.len());
        arn.push_str(&self.prefix);
        arn.push_str(segment);
        arn.push_str(name);
        arn
    }

    /// The name in `arn` if it names a resource of `kind` in this account and region.
    pub fn name<'a>(&self, kind: Kind, arn: &'a str) -> Option<&'a str> {
        arn.strip_prefix(self.prefix.as_str())?
            .strip_prefix(kind.segment())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_are_built_and_read_back() {
        let arns = Arns::new("us-east-1", "123456789012");
        let arn = arns.of(Kind::ThingGroup, "floor");
        assert_eq!(arn, "arn:aws:iot:us-east-1:123456789012:thinggroup/floor");
        assert_eq!(arns.name(Kind::ThingGroup, &arn), Some("floor"));
        assert_eq!(arns.name(Kind::Certificate, &arn), None);
        let elsewhere = Arns::new("eu-west-1", "123456789012").of(Kind::ThingGroup, "floor");
        assert_eq!(arns.name(Kind::ThingGroup, &elsewhere), None);
    }
}
