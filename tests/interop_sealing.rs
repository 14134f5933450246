//! Third-party sealing (docs/vault.md, "Sealing a value yourself"): values sealed by pyhpke, by
//! Node's `@hpke/core` and by the studio's own WebCrypto module (`web/hpke.js`) with the published
//! recipe, pushed as `sealed_value` to a real vault,
//! open with the environment's key exactly as the agent opens them; seals made with a library's
//! default info or a wrong AAD are accepted by the vault (it cannot tell) and never open.

mod common;
mod common_interop;

use common::{ENV, TestVault, raw, tok};
use common_interop::sealing::{Mistake, seal_node, seal_python, seal_webcrypto};
use fyvault::crypto::{self, CryptoError};
use serde_json::json;

#[tokio::test]
async fn third_party_seals_open_as_the_agent_opens_them() {
    let tv = TestVault::start().await;
    let f = tv.fixture().await;
    let prov = tv.client(&f.provider_token);
    let pk = prov.public_key(&f.org, ENV).await.unwrap();
    assert_eq!(pk.info, crypto::INFO);
    assert_eq!(pk.info, "fyvault sealed secret v1");
    let push = format!(
        "{}/api/v1/orgs/{}/providers/{}/push",
        tv.url, f.org, f.provider
    );
    let agent = tv.client(&f.agent_token);

    let cases: [(&str, Mistake, bool); 5] = [
        ("PY_SEALED", Mistake::None, true),
        ("NODE_SEALED", Mistake::None, true),
        ("WEBCRYPTO_SEALED", Mistake::None, true),
        ("PY_DEFAULT_INFO", Mistake::DefaultInfo, false),
        ("PY_WRONG_AAD", Mistake::WrongAad, false),
    ];
    for (name, mistake, opens) in cases {
        let value = format!("{name}: sealed elsewhere ✓\n").into_bytes();
        let place = (f.org.as_str(), ENV, name);
        let sealed = if name.starts_with("NODE") {
            seal_node(&pk.public_key, place, &value)
        } else if name.starts_with("WEBCRYPTO") {
            seal_webcrypto(&pk.public_key, place, &value)
        } else {
            seal_python(&pk.public_key, place, &value, mistake)
        };
        let body = json!({"secret_name": name, "environment": ENV, "sealed_value": sealed});
        let r = raw(
            "POST",
            &push,
            Some(&tok(&f.provider_token)),
            Some(&body.to_string()),
            &[],
        )
        .await;
        assert_eq!(r.0, 201, "{name}: {}", r.2);

        let sync = agent.sync(&f.org, ENV, 0, 0).await.unwrap();
        let entry = sync.secrets.iter().find(|s| s.name == name).unwrap();
        let stored = entry.sealed_value.as_deref().unwrap();
        assert_eq!(stored, sealed, "{name}: the vault keeps the seal as sent");
        let opened = f.key.open(stored, &crypto::aad(&f.org, ENV, name));
        if opens {
            assert_eq!(opened.unwrap().expose(), &value[..], "{name}");
        } else {
            assert_eq!(opened.unwrap_err(), CryptoError::OpenFailed, "{name}");
        }
    }
}
