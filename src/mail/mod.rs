//! Mail: the desired state of a mail instance (domains, mailboxes, aliases, the relay, the DKIM
//! keys and which one signs), checked here, and rendered as the files the mail container reads
//! (images/mail: Postfix texthash maps, a Dovecot passwd-file, rspamd's DKIM selector map).
//! ilot owns the DKIM keys, not the container, because a key must be published in DNS before
//! mail is signed with it. docs/mail.md describes the whole of it.

pub mod autoconfig;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The selector of a domain's first key; rotation adds ilot2, ilot3...
pub const FIRST_SELECTOR: &str = "ilot1";

/// The addresses every mail domain keeps: postmaster (RFC 5321 requires it), abuse and
/// hostmaster (RFC 2142). DMARC and TLS-RPT reports and the SOA contact point at them, so they
/// must accept mail: each goes to the admin (`[mail] postmaster`, else the server's first
/// mailbox) unless the admin made a mailbox or an alias of that name, and none can be removed.
pub const ROLE_ADDRESSES: [&str; 3] = ["postmaster", "abuse", "hostmaster"];

/// Whether `address` is one of a domain's role addresses (postmaster@, abuse@, hostmaster@).
pub fn is_role_address(address: &str) -> bool {
    address
        .split_once('@')
        .is_some_and(|(local, _)| ROLE_ADDRESSES.contains(&local))
}

/// The group (in the mail image) that may read the secret files: `ilotsecret`.
pub const SECRET_GID: u32 = 10025;

/// The one name a mail server goes by on the internet: its SMTP greeting and HELO, the PTR of
/// the host's addresses and the name those resolve from (forward-confirmed reverse DNS, which
/// receivers check). `[host] hostname` when set, since that is the name the PTR is planned for;
/// else the mail server's own domain (its MX target).
pub fn helo_name(host: &crate::config::HostConfig, server_domain: Option<&str>) -> String {
    host.hostname
        .clone()
        .or_else(|| server_domain.map(str::to_string))
        .unwrap_or_else(|| "localhost".into())
}

/// Where the image keeps a mailbox: /var/mail/vhosts/DOMAIN/LOCAL/Maildir.
pub fn maildir(address: &str) -> String {
    let (local, domain) = address.split_once('@').unwrap_or((address, ""));
    format!("/var/mail/vhosts/{domain}/{local}/Maildir")
}

/// Everything ilot keeps about one mail instance (stored with the instance).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MailState {
    /// The domains this server receives mail for (sorted).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Mailboxes by address.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// "info@example.org" or "@example.org" (catch-all) -> where it goes.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// The smarthost outbound mail goes through, when port 25 is blocked.
    #[serde(default)]
    pub relay: Option<Relay>,
    /// Per domain: the signing selector, a newer one waiting to resolve, older ones retiring.
    #[serde(default)]
    pub dkim: BTreeMap<String, Dkim>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    /// `{ARGON2ID}$argon2id$...` (the PHC string Dovecot verifies).
    pub hash: String,
    /// Bytes; none means no quota.
    #[serde(default)]
    pub quota: Option<u64>,
    pub created: u64,
}

/// The account an app that sends mail (`[needs] smtp`) gets on the mail server, rendered into
/// its env as {{smtp.host}}, {{smtp.port}}, {{smtp.user}}, {{smtp.password}}, {{smtp.from}}.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmtpAccount {
    /// The mail instance that holds the account.
    pub server: String,
    /// The mail server's name; inside the app's containers it resolves to the host, where
    /// the submission port is published (so TLS names match).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl SmtpAccount {
    pub fn value(&self, key: &str) -> Option<String> {
        Some(match key {
            "host" => self.host.clone(),
            "port" => self.port.to_string(),
            "user" | "from" => self.user.clone(),
            // The mail domain of the From address (apps that take it apart: Nextcloud).
            "domain" => self.user.rsplit_once('@')?.1.to_string(),
            "password" => self.password.clone(),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// "encrypt" (TLS required, the default) or "none" (a relay on a trusted local network).
    pub tls: String,
    /// The domain whose SPF record lists the relay's sending servers: the SPF of every mail
    /// domain gets `include:` it, or relayed mail fails SPF. None: not known (ilot says so).
    #[serde(default)]
    pub spf_include: Option<String>,
}

/// The SPF domains well-known relays publish for their customers' `include:` (each from the
/// relay's own documentation). A relay host ends with the first part.
const KNOWN_RELAY_SPF: &[(&str, &str)] = &[
    ("smtp.gmail.com", "_spf.google.com"),
    ("smtp-relay.gmail.com", "_spf.google.com"),
    ("smtp.office365.com", "spf.protection.outlook.com"),
    ("smtp.sendgrid.net", "sendgrid.net"),
    ("smtp.mailgun.org", "mailgun.org"),
    ("smtp.eu.mailgun.org", "mailgun.org"),
    ("in-v3.mailjet.com", "spf.mailjet.com"),
    ("smtp-relay.brevo.com", "spf.brevo.com"),
    ("smtp-relay.sendinblue.com", "spf.brevo.com"),
    ("smtp.postmarkapp.com", "spf.mtasv.net"),
    ("smtp.fastmail.com", "spf.messagingengine.com"),
    ("smtp.zoho.com", "zoho.com"),
    ("smtp.zoho.eu", "zoho.eu"),
    (".amazonaws.com", "amazonses.com"),
    ("smtp.mailbox.org", "mailbox.org"),
];

/// The SPF domain of a well-known relay host, if ilot knows it.
pub fn known_relay_spf(host: &str) -> Option<&'static str> {
    KNOWN_RELAY_SPF
        .iter()
        .find(|(h, _)| {
            if h.starts_with('.') {
                host.ends_with(h) && host.starts_with("email-smtp.")
            } else {
                host == *h
            }
        })
        .map(|(_, spf)| *spf)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Dkim {
    /// The selector mail is signed with now.
    pub signing: String,
    /// A new selector, published, that takes over once it resolves.
    #[serde(default)]
    pub pending: Option<String>,
    /// Former selectors still published (mail signed with them may still be in transit),
    /// with the time their key is removed.
    #[serde(default)]
    pub retiring: BTreeMap<String, u64>,
}

/// Lowercases and checks an address; returns it with its domain.
pub fn parse_address(s: &str) -> Result<(String, String)> {
    let a = s.trim().to_ascii_lowercase();
    let Some((local, domain)) = a.rsplit_once('@') else {
        return Err(Error::bad_input(format!(
            "{s:?} is not a mail address: expected name@domain"
        )));
    };
    let bad_local = local.is_empty()
        || local.len() > 64
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if bad_local {
        return Err(Error::bad_input(format!(
            "{s:?}: the part before '@' must be 1 to 64 letters, digits, '.', '_', '+' or '-' \
             (no dot at either end, no two dots in a row)"
        )));
    }
    crate::names::check_domain(domain)?;
    Ok((a.clone(), domain.to_string()))
}

/// Argon2id with 19 MiB and 2 passes (OWASP's floor): a login costs ~50 ms on a Pi 4, and a
/// stolen file costs an attacker the same per guess.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    check_password(password)?;
    let params = argon2::Params::new(19 * 1024, 2, 1, None)
        .map_err(|e| Error::failed(format!("argon2 parameters: {e}")))?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::generate(&mut OsRng);
    let hash = hasher
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| Error::failed(format!("cannot hash the password: {e}")))?;
    Ok(format!("{{ARGON2ID}}{hash}"))
}

/// Whether `password` matches a stored hash, as Dovecot checks it.
#[cfg(test)]
fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let Some(phc) = hash.strip_prefix("{ARGON2ID}") else {
        return false;
    };
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < 10 {
        return Err(
            Error::bad_input("the password is shorter than 10 characters")
                .hint("choose a longer one (a few random words are easy to type on a phone)"),
        );
    }
    if password.len() > 1024 || password.chars().any(|c| c.is_control()) {
        return Err(Error::bad_input(
            "the password must be at most 1024 bytes, without control characters or newlines",
        ));
    }
    Ok(())
}

/// "2G", "500M" -> bytes.
pub fn parse_quota(s: &str) -> Result<u64> {
    crate::catalog::parse_memory(s)
        .map(|b| b as u64)
        .ok_or_else(|| {
            Error::bad_input(format!(
                "quota {s:?} is not a size: give a number with K, M or G, e.g. 2G"
            ))
        })
}

impl MailState {
    /// Where the role addresses go: `configured` (`[mail] postmaster`) when set, else the
    /// first mailbox created on this server; none while there is neither.
    pub fn role_target(&self, configured: Option<&str>) -> Option<String> {
        configured.map(str::to_string).or_else(|| {
            self.users
                .iter()
                .min_by_key(|(a, u)| (u.created, a.as_str()))
                .map(|(a, _)| a.clone())
        })
    }

    /// The role addresses ilot itself provides, with their target: those of every domain the
    /// admin did not make a mailbox or an alias of.
    pub fn roles(&self, configured: Option<&str>) -> Vec<(String, String)> {
        let Some(target) = self.role_target(configured) else {
            return Vec::new();
        };
        self.domains
            .iter()
            .flat_map(|d| ROLE_ADDRESSES.iter().map(move |r| format!("{r}@{d}")))
            .filter(|a| !self.users.contains_key(a) && !self.aliases.contains_key(a))
            .filter(|a| *a != target)
            .map(|a| (a, target.clone()))
            .collect()
    }

    /// Whether mail to postmaster@`domain` is accepted here (so a record may point at it).
    pub fn postmaster_accepts(&self, domain: &str, configured: Option<&str>) -> bool {
        let a = format!("postmaster@{domain}");
        self.has_domain(domain)
            && (self.users.contains_key(&a)
                || self.aliases.contains_key(&a)
                || self.role_target(configured).is_some())
    }

    fn has_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d == domain)
    }

    fn local_domain(&self, address: &str, what: &str) -> Result<(String, String)> {
        let (a, d) = parse_address(address)?;
        if !self.has_domain(&d) {
            return Err(Error::bad_input(format!(
                "{d} is not a mail domain of this server, so it cannot have {what} {a}"
            ))
            .hint(format!("add it first: `ilot mail domain add {d}`")));
        }
        Ok((a, d))
    }

    pub fn add_domain(&mut self, domain: &str) -> Result<()> {
        crate::names::check_domain(domain)?;
        if self.has_domain(domain) {
            return Err(Error::conflict(format!(
                "{domain} is already a mail domain"
            )));
        }
        self.domains.push(domain.to_string());
        self.domains.sort();
        Ok(())
    }

    pub fn remove_domain(&mut self, domain: &str) -> Result<()> {
        if !self.has_domain(domain) {
            return Err(Error::not_found(format!("{domain} is not a mail domain"))
                .hint("see `ilot mail domain list`"));
        }
        let in_domain = |a: &String| a.rsplit_once('@').is_some_and(|(_, d)| d == domain);
        let users = self.users.keys().filter(|a| in_domain(a)).count();
        let aliases = self.aliases.keys().filter(|a| in_domain(a)).count();
        if users + aliases > 0 {
            return Err(Error::conflict(format!(
                "{domain} still has {users} mailbox(es) and {aliases} alias(es)"
            ))
            .hint("remove them first (`ilot mail user list`, `ilot mail alias list`): a domain is never dropped with mail in it"));
        }
        self.domains.retain(|d| d != domain);
        self.dkim.remove(domain);
        Ok(())
    }

    pub fn add_user(&mut self, address: &str, hash: String, quota: Option<u64>) -> Result<String> {
        let (a, _) = self.local_domain(address, "the mailbox")?;
        if self.users.contains_key(&a) {
            return Err(
                Error::conflict(format!("the mailbox {a} already exists")).hint(format!(
                    "to change its password: `ilot mail user passwd {a}`"
                )),
            );
        }
        if self.aliases.contains_key(&a) {
            return Err(Error::conflict(format!("{a} is an alias")).hint(format!(
                "remove the alias first: `ilot mail alias remove {a}`"
            )));
        }
        self.users.insert(
            a.clone(),
            User {
                hash,
                quota,
                created: crate::state::now(),
            },
        );
        Ok(a)
    }

    /// The normalised address of an existing mailbox.
    pub fn mailbox(&self, address: &str) -> Result<String> {
        let (a, _) = parse_address(address)?;
        if !self.users.contains_key(&a) {
            return Err(
                Error::not_found(format!("no mailbox {a}")).hint("see `ilot mail user list`")
            );
        }
        Ok(a)
    }

    pub fn user_mut(&mut self, address: &str) -> Result<&mut User> {
        let a = self.mailbox(address)?;
        Ok(self.users.get_mut(&a).expect("checked above"))
    }

    pub fn remove_user(&mut self, address: &str) -> Result<String> {
        let a = self.mailbox(address)?;
        self.users.remove(&a);
        Ok(a)
    }

    /// `address` is name@domain, or @domain for a catch-all; targets may be anywhere.
    pub fn add_alias(&mut self, address: &str, targets: &[String]) -> Result<String> {
        let key = match address.trim().strip_prefix('@') {
            Some(domain) => {
                let domain = domain.to_ascii_lowercase();
                if !self.has_domain(&domain) {
                    return Err(Error::bad_input(format!(
                        "{domain} is not a mail domain of this server"
                    ))
                    .hint(format!("add it first: `ilot mail domain add {domain}`")));
                }
                format!("@{domain}")
            }
            None => {
                let (a, _) = self.local_domain(address, "the alias")?;
                if self.users.contains_key(&a) {
                    return Err(Error::conflict(format!("{a} is a mailbox, not an alias")));
                }
                a
            }
        };
        if targets.is_empty() {
            return Err(Error::bad_input(format!(
                "the alias {key} needs at least one target"
            )));
        }
        let mut out = Vec::new();
        for t in targets {
            let (t, _) = parse_address(t)?;
            if t == key {
                return Err(Error::bad_input(format!("{key} cannot point to itself")));
            }
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if self.aliases.contains_key(&key) {
            return Err(Error::conflict(format!("the alias {key} already exists"))
                .hint(format!("remove it first: `ilot mail alias remove {key}`")));
        }
        self.aliases.insert(key.clone(), out);
        Ok(key)
    }

    pub fn remove_alias(&mut self, address: &str) -> Result<String> {
        let key = address.trim().to_ascii_lowercase();
        let domain = key.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if is_role_address(&key) && self.has_domain(domain) && !self.aliases.contains_key(&key) {
            return Err(Error::conflict(format!(
                "{key} is a role address that every mail domain keeps (postmaster@ is required \
                 by RFC 5321; DMARC and TLS-RPT reports and the SOA contact go to these), so it \
                 cannot be removed while {domain} is a mail domain"
            ))
            .hint(
                "it goes to [mail] postmaster, or to the first mailbox; to send it elsewhere, set \
                 [mail] postmaster in /etc/ilot/ilot.toml or add an alias of that name",
            ));
        }
        if self.aliases.remove(&key).is_none() {
            return Err(
                Error::not_found(format!("no alias {key}")).hint("see `ilot mail alias list`")
            );
        }
        Ok(key)
    }
}

/// Parses "HOST:PORT" for the relay; `spf_include` is the relay's SPF domain (else the known
/// one for its host).
pub fn parse_relay(
    s: &str,
    user: &str,
    password: String,
    tls: &str,
    spf_include: Option<&str>,
) -> Result<Relay> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| {
        Error::bad_input(format!(
            "{s:?}: give the relay as HOST:PORT, e.g. smtp.isp.net:587"
        ))
    })?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::bad_input(format!("{port:?} is not a port number")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_err() {
        crate::names::check_domain(&host)?;
    }
    if user.is_empty()
        || user
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c.is_control())
    {
        return Err(Error::bad_input(
            "the relay user must be non-empty, without spaces, ':' or control characters",
        ));
    }
    if password.is_empty() || password.chars().any(|c| c.is_control()) {
        return Err(Error::bad_input(
            "the relay password must be non-empty, without control characters or newlines",
        ));
    }
    if !matches!(tls, "encrypt" | "none") {
        return Err(Error::bad_input(format!(
            "--tls {tls:?}: use encrypt (TLS required) or none"
        )));
    }
    let spf_include = match spf_include {
        Some(d) => {
            let d = d.trim().trim_start_matches("include:").to_ascii_lowercase();
            // A host name, except that SPF domains often start with an underscore label
            // (_spf.google.com).
            let labels_ok = d.len() <= 253
                && d.contains('.')
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !labels_ok {
                return Err(
                    Error::bad_input(format!("--spf-include {d:?} is not a domain name")).hint(
                        "give the domain the relay's documentation says to include, e.g. \
                     --spf-include spf.relay.example",
                    ),
                );
            }
            Some(d)
        }
        None => known_relay_spf(&host).map(str::to_string),
    };
    Ok(Relay {
        host,
        port,
        user: user.to_string(),
        password,
        tls: tls.to_string(),
        spf_include,
    })
}

// ---- DKIM keys: state_dir/dkim/DOMAIN/SELECTOR.key (PKCS#8 PEM, 0600) and SELECTOR.txt ----

fn key_dir(state_dir: &Path, domain: &str) -> PathBuf {
    state_dir.join("dkim").join(domain)
}

/// The DKIM keys of `domain` as (selector, TXT value), creating the first one if there is none.
/// Every key listed is published; the state says which one signs.
pub fn keys(state_dir: &Path, domain: &str) -> Result<Vec<(String, String)>> {
    let dir = key_dir(state_dir, domain);
    let mut out = read_keys(&dir)?;
    if out.is_empty() {
        new_key(state_dir, domain, FIRST_SELECTOR)?;
        out = read_keys(&dir)?;
    }
    Ok(out)
}

/// The next selector for a rotation: one past the highest `ilotN`.
pub fn next_selector(existing: &[(String, String)]) -> String {
    let n = existing
        .iter()
        .filter_map(|(s, _)| s.strip_prefix("ilot")?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    format!("ilot{}", n + 1)
}

/// Makes a key. RSA-2048: what every receiver verifies (Ed25519 alone is ignored by Gmail).
pub fn new_key(state_dir: &Path, domain: &str, selector: &str) -> Result<()> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let dir = key_dir(state_dir, domain);
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
    crate::state::write_private(&dir.join(format!("{selector}.key")), pem.as_bytes())?;
    crate::state::write_private(&dir.join(format!("{selector}.txt")), &value)
}

/// Removes a retired key: its TXT record goes with it.
pub fn remove_key(state_dir: &Path, domain: &str, selector: &str) -> Result<()> {
    let dir = key_dir(state_dir, domain);
    for ext in ["txt", "key"] {
        let path = dir.join(format!("{selector}.{ext}"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::failed(format!(
                    "cannot remove {}: {e}",
                    path.display()
                )))
            }
            _ => {}
        }
    }
    Ok(())
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

// ---- the files the mail container reads (bind-mounted read-only at /etc/ilot-mail) ----

/// One file: its name under the directory, content, and whether only the mail services may
/// read it.
struct File {
    name: String,
    content: String,
    secret: bool,
}

/// Writes the container's files for `state` into `dir`; returns whether any changed.
/// `helo` is the name the server greets and says HELO with (the one the host's PTR names);
/// `postmaster` is `[mail] postmaster`, where the role addresses go.
pub fn render(
    state: &MailState,
    state_dir: &Path,
    dir: &Path,
    helo: &str,
    postmaster: Option<&str>,
) -> Result<bool> {
    let mut files = Vec::new();
    let mut add = |name: &str, content: String, secret: bool| {
        files.push(File {
            name: name.to_string(),
            content,
            secret,
        })
    };
    let lines = |it: &mut dyn Iterator<Item = String>| it.map(|l| l + "\n").collect::<String>();

    let mut postfix = format!("myhostname = {helo}\n");
    if let Some(r) = &state.relay {
        let level = if r.tls == "none" { "may" } else { "encrypt" };
        postfix.push_str(&format!(
            "relayhost = [{}]:{}\nsmtp_sasl_auth_enable = yes\n\
             smtp_sasl_password_maps = texthash:/etc/ilot-mail/relay_password\n\
             smtp_sasl_security_options = noanonymous\nsmtp_sasl_tls_security_options = noanonymous\n\
             smtp_tls_security_level = {level}\n",
            r.host, r.port
        ));
    }
    add("postfix.cf", postfix, false);
    add(
        "domains",
        lines(&mut state.domains.iter().map(|d| format!("{d} OK"))),
        false,
    );
    add(
        "mailboxes",
        lines(&mut state.users.keys().map(|a| {
            let (local, domain) = a.split_once('@').unwrap_or((a, ""));
            format!("{a} {domain}/{local}/")
        })),
        false,
    );
    // A mailbox maps to itself, so that a catch-all of its domain does not swallow it.
    let mut aliases: Vec<String> = state.users.keys().map(|a| format!("{a} {a}")).collect();
    aliases.extend(
        state
            .aliases
            .iter()
            .map(|(a, t)| format!("{a} {}", t.join(","))),
    );
    // postmaster@, abuse@, hostmaster@ of every domain (a line of its own wins over a
    // catch-all).
    let roles = state.roles(postmaster);
    aliases.extend(roles.iter().map(|(a, t)| format!("{a} {t}")));
    add("aliases", lines(&mut aliases.into_iter()), false);
    // Who may send as whom: a mailbox as itself, an alias by the local mailboxes it reaches.
    let mut senders: BTreeMap<&str, Vec<&str>> = state
        .users
        .keys()
        .map(|a| (a.as_str(), vec![a.as_str()]))
        .collect();
    for (a, targets) in &state.aliases {
        if a.starts_with('@') {
            continue;
        }
        let owners: Vec<&str> = targets
            .iter()
            .filter(|t| state.users.contains_key(*t))
            .map(|t| t.as_str())
            .collect();
        if !owners.is_empty() {
            senders.insert(a, owners);
        }
    }
    for (a, t) in &roles {
        if state.users.contains_key(t) {
            senders.insert(a.as_str(), vec![t.as_str()]);
        }
    }
    add(
        "senders",
        lines(&mut senders.iter().map(|(a, o)| format!("{a} {}", o.join(",")))),
        false,
    );
    add(
        "relay_password",
        state
            .relay
            .iter()
            .map(|r| format!("[{}]:{} {}:{}\n", r.host, r.port, r.user, r.password))
            .collect(),
        true,
    );
    add(
        "users",
        lines(&mut state.users.iter().map(|(a, u)| {
            let quota = u
                .quota
                .map(|q| format!("userdb_quota_rule=*:bytes={q}"))
                .unwrap_or_default();
            format!("{a}:{}::::::{quota}", u.hash)
        })),
        true,
    );
    // The keys go before the map that names them (files are written in this order). A key
    // leaves the container only when it leaves DNS: after a rotation switched the map, an
    // rspamd worker that has not re-read it yet (the map is watched every few seconds, and a
    // reload lets old workers finish their sessions) still signs with the previous selector,
    // and must find its key, which is still published while it retires.
    let mut selectors = String::new();
    for (domain, k) in &state.dkim {
        selectors.push_str(&format!("{domain} {}\n", k.signing));
        let dir = key_dir(state_dir, domain);
        let pem = std::fs::read_to_string(dir.join(format!("{}.key", k.signing))).map_err(|e| {
            Error::failed(format!(
                "the DKIM key {} of {domain} is missing: {e}",
                k.signing
            ))
        })?;
        add(&format!("dkim/{domain}.{}.key", k.signing), pem, true);
        for old in k.retiring.keys().filter(|s| **s != k.signing) {
            // (A retiring key whose file is gone is not published either: it stays out.)
            if let Ok(pem) = std::fs::read_to_string(dir.join(format!("{old}.key"))) {
                add(&format!("dkim/{domain}.{old}.key"), pem, true);
            }
        }
    }
    add("dkim/selectors.map", selectors, false);

    let mut changed = false;
    for sub in [dir.to_path_buf(), dir.join("dkim")] {
        std::fs::create_dir_all(&sub)
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", sub.display())))?;
    }
    for f in &files {
        changed |= write_if_changed(&dir.join(&f.name), &f.content, f.secret)?;
    }
    // Keys no longer published (withdrawn, or of a removed domain) leave the container.
    if let Ok(entries) = std::fs::read_dir(dir.join("dkim")) {
        for e in entries.flatten() {
            let name = format!("dkim/{}", e.file_name().to_string_lossy());
            if !files.iter().any(|f| f.name == name) {
                let _ = std::fs::remove_file(e.path());
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// Replaces a file atomically when its content differs: 0644 root, or 0640 root:ilotsecret.
fn write_if_changed(path: &Path, content: &str, secret: bool) -> Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    let io = |e: std::io::Error| Error::failed(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if secret { 0o640 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    if secret {
        std::os::unix::fs::fchown(&f, Some(0), Some(SECRET_GID)).map_err(io)?;
    }
    f.write_all(content.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> MailState {
        MailState {
            domains: vec!["example.org".into()],
            ..Default::default()
        }
    }

    #[test]
    fn addresses_are_checked_and_lowercased() {
        assert_eq!(
            parse_address("Bob@Example.org").unwrap(),
            ("bob@example.org".into(), "example.org".into())
        );
        for bad in [
            "bob",
            "@example.org",
            "bo b@example.org",
            ".bob@example.org",
            "a..b@example.org",
            "bob@localhost",
            "bob@exa_mple.org",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(
            h.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{h}"
        );
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery!"));
        assert!(hash_password("short").is_err());
        assert!(hash_password("a long one\nwith a newline").is_err());
    }

    #[test]
    fn users_aliases_and_domains_refuse_what_makes_no_sense() {
        let mut s = server();
        s.add_user("bob@example.org", "{ARGON2ID}x".into(), None)
            .unwrap();
        let e = s.add_user("BOB@example.org", "h".into(), None).unwrap_err();
        assert!(e.message.contains("already exists"), "{e}");
        let e = s.add_user("ann@example.net", "h".into(), None).unwrap_err();
        assert!(e.message.contains("not a mail domain"), "{e}");
        let before = s.clone();
        assert!(s
            .add_alias("bob@example.org", &["ann@example.net".into()])
            .is_err());
        assert!(s.add_alias("info@example.org", &[]).is_err());
        assert!(s
            .add_alias("info@example.org", &["not an address".into()])
            .is_err());
        assert!(s
            .add_alias("@example.net", &["bob@example.org".into()])
            .is_err());
        assert_eq!(s, before, "refused changes change nothing");
        s.add_alias(
            "info@example.org",
            &["bob@example.org".into(), "x@example.net".into()],
        )
        .unwrap();
        s.add_alias("@example.org", &["bob@example.org".into()])
            .unwrap();
        let e = s.remove_domain("example.org").unwrap_err();
        assert!(e.message.contains("1 mailbox(es) and 2 alias(es)"), "{e}");
        s.add_domain("example.net").unwrap();
        assert!(s.add_domain("example.net").is_err());
        s.remove_domain("example.net").unwrap();
    }

    #[test]
    fn files_say_who_receives_and_who_may_send() {
        let dir = std::env::temp_dir().join(format!("ilot-mail-render-{}", std::process::id()));
        let state_dir = dir.join("state");
        let out = dir.join("out");
        let mut s = server();
        s.add_user("bob@example.org", "{ARGON2ID}$h".into(), Some(2 << 30))
            .unwrap();
        s.add_alias(
            "info@example.org",
            &["bob@example.org".into(), "x@example.net".into()],
        )
        .unwrap();
        s.add_alias("@example.org", &["bob@example.org".into()])
            .unwrap();
        s.relay =
            Some(parse_relay("smtp.isp.net:587", "me", "pw".into(), "encrypt", None).unwrap());
        new_key(&state_dir, "example.org", "ilot1").unwrap();
        s.dkim.insert(
            "example.org".into(),
            Dkim {
                signing: "ilot1".into(),
                ..Default::default()
            },
        );
        assert!(render(&s, &state_dir, &out, "mail.example.org", None).unwrap());
        assert!(
            !render(&s, &state_dir, &out, "mail.example.org", None).unwrap(),
            "unchanged: no rewrite"
        );
        let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap();
        assert_eq!(read("domains"), "example.org OK\n");
        assert_eq!(read("mailboxes"), "bob@example.org example.org/bob/\n");
        assert_eq!(
            read("aliases"),
            "bob@example.org bob@example.org\n@example.org bob@example.org\n\
             info@example.org bob@example.org,x@example.net\n\
             postmaster@example.org bob@example.org\nabuse@example.org bob@example.org\n\
             hostmaster@example.org bob@example.org\n"
        );
        assert_eq!(
            read("senders"),
            "abuse@example.org bob@example.org\nbob@example.org bob@example.org\n\
             hostmaster@example.org bob@example.org\ninfo@example.org bob@example.org\n\
             postmaster@example.org bob@example.org\n"
        );
        assert_eq!(
            read("users"),
            "bob@example.org:{ARGON2ID}$h::::::userdb_quota_rule=*:bytes=2147483648\n"
        );
        assert_eq!(read("relay_password"), "[smtp.isp.net]:587 me:pw\n");
        assert!(read("postfix.cf").contains("relayhost = [smtp.isp.net]:587\n"));
        assert_eq!(read("dkim/selectors.map"), "example.org ilot1\n");
        assert!(read("dkim/example.org.ilot1.key").contains("PRIVATE KEY"));
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(out.join("users")).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.gid()), (0o640, SECRET_GID));
        // The relay goes: its settings and password go with it.
        s.relay = None;
        assert!(render(&s, &state_dir, &out, "mail.example.org", None).unwrap());
        assert_eq!(read("relay_password"), "");
        assert!(!read("postfix.cf").contains("relayhost"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_retiring_key_stays_in_the_container_until_it_is_withdrawn() {
        let dir = std::env::temp_dir().join(format!("ilot-mail-rotate-{}", std::process::id()));
        let state_dir = dir.join("state");
        let out = dir.join("out");
        let mut s = server();
        new_key(&state_dir, "example.org", "ilot1").unwrap();
        new_key(&state_dir, "example.org", "ilot2").unwrap();
        s.dkim.insert(
            "example.org".into(),
            Dkim {
                signing: "ilot1".into(),
                pending: Some("ilot2".into()),
                ..Default::default()
            },
        );
        render(&s, &state_dir, &out, "mail.example.org", None).unwrap();
        let has = |n: &str| out.join("dkim").join(n).exists();
        assert!(has("example.org.ilot1.key") && !has("example.org.ilot2.key"));
        // The switch: the map names ilot2, and ilot1 (still published) stays for the workers
        // that still read the old map.
        let k = s.dkim.get_mut("example.org").unwrap();
        k.signing = "ilot2".into();
        k.pending = None;
        k.retiring.insert("ilot1".into(), 1);
        assert!(render(&s, &state_dir, &out, "mail.example.org", None).unwrap());
        let map = std::fs::read_to_string(out.join("dkim/selectors.map")).unwrap();
        assert_eq!(map, "example.org ilot2\n");
        assert!(has("example.org.ilot1.key") && has("example.org.ilot2.key"));
        // Withdrawn: it leaves DNS and the container together.
        remove_key(&state_dir, "example.org", "ilot1").unwrap();
        s.dkim.get_mut("example.org").unwrap().retiring.clear();
        assert!(render(&s, &state_dir, &out, "mail.example.org", None).unwrap());
        assert!(!has("example.org.ilot1.key") && has("example.org.ilot2.key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_domain_keeps_its_role_addresses() {
        let mut s = server();
        s.add_domain("example.net").unwrap();
        assert!(
            s.roles(None).is_empty() && !s.postmaster_accepts("example.org", None),
            "no mailbox yet: nowhere to deliver"
        );
        assert_eq!(
            s.roles(Some("admin@elsewhere.test")).len(),
            6,
            "a configured address receives them at once"
        );
        s.add_user("bob@example.org", "h".into(), None).unwrap();
        s.users.get_mut("bob@example.org").unwrap().created = 1;
        s.add_user("ann@example.org", "h".into(), None).unwrap();
        let roles = s.roles(None);
        assert!(roles.contains(&("abuse@example.net".into(), "bob@example.org".into())));
        assert!(s.postmaster_accepts("example.net", None));
        // The admin may send postmaster@ elsewhere with an alias of that name...
        s.add_alias("postmaster@example.org", &["ann@example.org".into()])
            .unwrap();
        assert!(!s
            .roles(None)
            .iter()
            .any(|(a, _)| a == "postmaster@example.org"));
        s.remove_alias("postmaster@example.org").unwrap();
        // ...but never remove it.
        let before = s.clone();
        let e = s.remove_alias("Postmaster@example.org").unwrap_err();
        assert!(e.message.contains("role address"), "{e}");
        assert!(s.remove_alias("abuse@example.net").is_err());
        assert_eq!(s, before);
        // The first mailbox goes: the next one receives them.
        s.remove_user("bob@example.org").unwrap();
        assert_eq!(s.role_target(None).as_deref(), Some("ann@example.org"));
    }

    #[test]
    fn a_relay_brings_its_spf() {
        let r = parse_relay(
            "smtp.sendgrid.net:587",
            "apikey",
            "pw".into(),
            "encrypt",
            None,
        )
        .unwrap();
        assert_eq!(r.spf_include.as_deref(), Some("sendgrid.net"));
        let r = parse_relay(
            "email-smtp.eu-west-1.amazonaws.com:587",
            "AKIA",
            "pw".into(),
            "encrypt",
            None,
        )
        .unwrap();
        assert_eq!(r.spf_include.as_deref(), Some("amazonses.com"));
        let r = parse_relay("smtp.isp.net:587", "me", "pw".into(), "encrypt", None).unwrap();
        assert_eq!(r.spf_include, None, "unknown: nothing guessed");
        let r = parse_relay(
            "smtp.isp.net:587",
            "me",
            "pw".into(),
            "encrypt",
            Some("include:_SPF.isp.net"),
        )
        .unwrap();
        assert_eq!(r.spf_include.as_deref(), Some("_spf.isp.net"));
        let e = parse_relay(
            "smtp.isp.net:587",
            "me",
            "pw".into(),
            "encrypt",
            Some("a b"),
        )
        .unwrap_err();
        assert!(e.message.contains("--spf-include"), "{e}");
    }

    #[test]
    fn selectors_count_up() {
        assert_eq!(next_selector(&[]), "ilot1");
        assert_eq!(
            next_selector(&[
                ("ilot1".into(), String::new()),
                ("ilot9".into(), String::new())
            ]),
            "ilot10"
        );
    }
}
