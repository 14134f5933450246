//! The vault server: routes, auth, store (SQL), sync feed, audit log.
