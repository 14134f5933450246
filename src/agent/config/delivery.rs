//! Validation of the delivery settings: `[credentials]` (and, with them, templates and file
//! modes; see [`crate::agent::delivery`]).

use std::collections::BTreeMap;

use super::{ConfigError, Validator};
use crate::agent::delivery::{Delivery, valid_credential_id};
use crate::api::valid_secret_name;

impl Validator {
    pub(super) fn delivery(
        &mut self,
        credentials: BTreeMap<String, String>,
    ) -> Result<Delivery, ConfigError> {
        for (id, name) in &credentials {
            let key = format!("credentials.{id}");
            if !valid_credential_id(id) {
                return Err(self.err(
                    key,
                    "not a systemd credential id (a file name: no '/', not '.' or '..')",
                ));
            }
            if !valid_secret_name(name) {
                return Err(self.err(
                    key,
                    format!("{name:?} is not a secret name (^[A-Z_][A-Z0-9_]{{0,127}}$)"),
                ));
            }
        }
        Ok(Delivery { credentials })
    }
}
