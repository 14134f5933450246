//! Per-secret policy, the secret listing (admin token) and connect links (agent token).

use reqwest::Method;

use super::{ClientError, VaultClient, seg};
use crate::api::{
    ConnectLink, ConnectLinkRequest, PolicyResponse, SecretList, SecretPolicy, SetPolicyRequest,
};

impl VaultClient {
    /// `PUT …/environments/:env/secrets/:name/policy` (admin).
    pub async fn set_policy(
        &self,
        org: &str,
        env: &str,
        name: &str,
        policy: SecretPolicy,
    ) -> Result<PolicyResponse, ClientError> {
        self.json(
            Method::PUT,
            &format!(
                "/api/v1/orgs/{}/environments/{}/secrets/{}/policy",
                seg(org),
                seg(env),
                seg(name)
            ),
            &SetPolicyRequest { policy },
        )
        .await
    }

    /// `GET …/environments/:env/secrets` (admin).
    pub async fn list_secrets(&self, org: &str, env: &str) -> Result<SecretList, ClientError> {
        self.get(&format!(
            "/api/v1/orgs/{}/environments/{}/secrets",
            seg(org),
            seg(env)
        ))
        .await
    }

    /// `POST …/environments/:env/connect-links` (the environment's agent token).
    pub async fn connect_link(
        &self,
        org: &str,
        env: &str,
        req: &ConnectLinkRequest,
    ) -> Result<ConnectLink, ClientError> {
        self.json(
            Method::POST,
            &format!(
                "/api/v1/orgs/{}/environments/{}/connect-links",
                seg(org),
                seg(env)
            ),
            req,
        )
        .await
    }
}
