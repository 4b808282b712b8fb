//! The principals (certificates) attached to things: AttachThingPrincipal and its kin.

use halyard_raft::Txn;

use super::Registry;
use crate::services::error::Result;
use crate::services::links;
use crate::services::records::Page;
use crate::store::keys;

impl Registry {
    /// AttachThingPrincipal: `principal` must be a registered certificate's ARN.
    pub async fn attach_principal(&self, thing: &str, principal: &str) -> Result<()> {
        self.thing(thing).await?;
        self.certs.check_principal(principal).await?;
        let txn = Txn::new().and_then(links::attach_principal(thing, principal));
        self.records.txn(txn).await?;
        Ok(())
    }

    /// DetachThingPrincipal.
    pub async fn detach_principal(&self, thing: &str, principal: &str) -> Result<()> {
        self.thing(thing).await?;
        let txn = Txn::new().and_then(links::detach_principal(thing, principal));
        self.records.txn(txn).await?;
        Ok(())
    }

    /// ListThingPrincipals.
    pub async fn principals_of(
        &self,
        thing: &str,
        page: &Page,
    ) -> Result<(Vec<String>, Option<String>)> {
        self.thing(thing).await?;
        page.collect(
            &self.records,
            &keys::thing_principals(thing),
            |_: &String| true,
        )
        .await
    }

    /// ListPrincipalThings: `principal` must be a registered certificate's ARN.
    pub async fn things_of_principal(
        &self,
        principal: &str,
        page: &Page,
    ) -> Result<(Vec<String>, Option<String>)> {
        self.certs.check_principal(principal).await?;
        page.collect(
            &self.records,
            &keys::principal_things(principal),
            |_: &String| true,
        )
        .await
    }
}
