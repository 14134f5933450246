//! The admin API (admin token): orgs, environments, providers, tokens, the audit trail. Used
//! by the CLI only.

use reqwest::Method;

use super::{ClientError, REQUEST_TIMEOUT, VaultClient, seg};
use crate::api::{
    AuditQuery, AuditQueryResponse, CreateEnvironmentRequest, CreateOrgRequest,
    CreateProviderRequest, CreateTokenRequest, EnvironmentInfo, EnvironmentList, IssuedToken,
    OrgInfo, OrgList, ProviderCreated, ProviderList, TokenList, TokenListQuery, TokenRevoked,
    UpdateEnvironmentRequest,
};

impl VaultClient {
    pub async fn create_org(&self, name: &str) -> Result<OrgInfo, ClientError> {
        self.json(
            Method::POST,
            "/api/v1/admin/orgs",
            &CreateOrgRequest {
                name: name.to_string(),
            },
        )
        .await
    }

    pub async fn list_orgs(&self) -> Result<OrgList, ClientError> {
        self.get("/api/v1/admin/orgs").await
    }

    pub async fn create_environment(
        &self,
        org: &str,
        req: &CreateEnvironmentRequest,
    ) -> Result<EnvironmentInfo, ClientError> {
        self.json(
            Method::POST,
            &format!("/api/v1/admin/orgs/{}/environments", seg(org)),
            req,
        )
        .await
    }

    pub async fn update_environment(
        &self,
        org: &str,
        env: &str,
        req: &UpdateEnvironmentRequest,
    ) -> Result<EnvironmentInfo, ClientError> {
        self.json(
            Method::PATCH,
            &format!("/api/v1/admin/orgs/{}/environments/{}", seg(org), seg(env)),
            req,
        )
        .await
    }

    pub async fn list_environments(&self, org: &str) -> Result<EnvironmentList, ClientError> {
        self.get(&format!("/api/v1/admin/orgs/{}/environments", seg(org)))
            .await
    }

    pub async fn create_provider(
        &self,
        org: &str,
        req: &CreateProviderRequest,
    ) -> Result<ProviderCreated, ClientError> {
        self.json(
            Method::POST,
            &format!("/api/v1/admin/orgs/{}/providers", seg(org)),
            req,
        )
        .await
    }

    pub async fn list_providers(&self, org: &str) -> Result<ProviderList, ClientError> {
        self.get(&format!("/api/v1/admin/orgs/{}/providers", seg(org)))
            .await
    }

    /// A further token for an existing provider (to rotate provider credentials).
    pub async fn create_provider_token(
        &self,
        org: &str,
        provider: &str,
        req: &CreateTokenRequest,
    ) -> Result<IssuedToken, ClientError> {
        self.json(
            Method::POST,
            &format!(
                "/api/v1/admin/orgs/{}/providers/{}/tokens",
                seg(org),
                seg(provider)
            ),
            req,
        )
        .await
    }

    /// An `fvagent_` token for one environment.
    pub async fn create_agent_token(
        &self,
        org: &str,
        env: &str,
        req: &CreateTokenRequest,
    ) -> Result<IssuedToken, ClientError> {
        self.json(
            Method::POST,
            &format!(
                "/api/v1/admin/orgs/{}/environments/{}/agent-tokens",
                seg(org),
                seg(env)
            ),
            req,
        )
        .await
    }

    /// A further `fvadmin_` token.
    pub async fn create_admin_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<IssuedToken, ClientError> {
        self.json(Method::POST, "/api/v1/admin/tokens", req).await
    }

    pub async fn list_tokens(&self, query: &TokenListQuery) -> Result<TokenList, ClientError> {
        let req = self
            .http
            .get(self.url("/api/v1/admin/tokens"))
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        Ok(self.send(req).await?.1)
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<TokenRevoked, ClientError> {
        let req = self
            .http
            .delete(self.url(&format!("/api/v1/admin/tokens/{}", seg(token_id))))
            .timeout(REQUEST_TIMEOUT);
        Ok(self.send(req).await?.1)
    }

    /// `GET /api/v1/orgs/:org/audit?…` (admin token).
    pub async fn audit(
        &self,
        org: &str,
        query: &AuditQuery,
    ) -> Result<AuditQueryResponse, ClientError> {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/orgs/{}/audit", seg(org))))
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        Ok(self.send(req).await?.1)
    }

    /// `GET /api/v1/admin/audit?…` (admin token): every org, plus org-less records.
    pub async fn audit_all(&self, query: &AuditQuery) -> Result<AuditQueryResponse, ClientError> {
        let req = self
            .http
            .get(self.url("/api/v1/admin/audit"))
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        Ok(self.send(req).await?.1)
    }
}
