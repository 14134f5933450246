//! HTTP client for the vault API (reqwest + rustls), used by the agent and the CLI.
