//! Mail: for now, the DKIM keys of the mail domains. ilot owns them (not the mail container),
//! because a key must be published in DNS before mail is signed with it.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The selector of a domain's first key. Rotation (issue 7) adds newer selectors beside it.
pub const FIRST_SELECTOR: &str = "ilot1";

/// state_dir/dkim/DOMAIN/SELECTOR.key (PKCS#8 PEM, 0600) and SELECTOR.txt (the DNS value).
fn key_dir(state_dir: &Path, domain: &str) -> PathBuf {
    state_dir.join("dkim").join(domain)
}

/// The DKIM keys of `domain` as (selector, TXT value), creating the first one if there is none.
/// RSA-2048: what every receiver verifies (Ed25519 alone is ignored by Gmail).
pub fn keys(state_dir: &Path, domain: &str) -> Result<Vec<(String, String)>> {
    let dir = key_dir(state_dir, domain);
    let mut out = read_keys(&dir)?;
    if out.is_empty() {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
            .map_err(|e| Error::failed(format!("cannot generate a DKIM key: {e}")))?;
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| Error::failed(format!("DKIM key: {e}")))?;
        let value = format!(
            "v=DKIM1; k=rsa; p={}",
            data_encoding::BASE64.encode(der.as_bytes())
        );
        let pem = key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| Error::failed(format!("DKIM key: {e}")))?;
        // The private key first: a public record without its key would be worse than none.
        crate::state::write_private(&dir.join(format!("{FIRST_SELECTOR}.key")), pem.as_bytes())?;
        crate::state::write_private(&dir.join(format!("{FIRST_SELECTOR}.txt")), &value)?;
        out = read_keys(&dir)?;
    }
    Ok(out)
}

fn read_keys(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "txt") && path.with_extension("key").exists() {
            let selector = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let value = std::fs::read_to_string(&path)
                .map_err(|e| Error::failed(format!("cannot read {}: {e}", path.display())))?;
            out.push((selector, value.trim().to_string()));
        }
    }
    out.sort();
    Ok(out)
}
