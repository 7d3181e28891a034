//! Where a repository lives, written as restic writes it (so the same string opens it with
//! `restic -r`): a local directory, `sftp:user@host:/path` (or `sftp://user@host:port//path`),
//! or `s3:https://endpoint/bucket/prefix`.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A directory: a mounted disk, a NAS share.
    Local(PathBuf),
    /// A directory on an SSH server, reached with the system's `ssh` (its sftp subsystem).
    /// `path` is as restic takes it: absolute, or relative to the login's home directory.
    Sftp {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        path: String,
    },
    /// A bucket (and a prefix in it) on S3 or an S3-compatible store, addressed path-style.
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
    },
}

const FORMS: &str = "give a directory (\"/mnt/backup/ilot\"), \"sftp:user@host:/srv/ilot\" (or \"sftp://user@host:2222//srv/ilot\"), or \"s3:https://s3.example.com/bucket/ilot\"";

impl Target {
    /// Parses a repository location; the error says what is wrong and which forms are taken.
    pub fn parse(s: &str) -> Result<Target, String> {
        let bad = |what: &str| Err(format!("{what}; {FORMS}"));
        if s.trim() != s || s.is_empty() || s.chars().any(char::is_control) {
            return bad("it is empty or has spaces or control characters around it");
        }
        if let Some(rest) = s.strip_prefix("s3:") {
            return Self::parse_s3(rest).or_else(|e| bad(&e));
        }
        if let Some(rest) = s.strip_prefix("sftp://") {
            return Self::parse_sftp_url(rest).or_else(|e| bad(&e));
        }
        if let Some(rest) = s.strip_prefix("sftp:") {
            return Self::parse_sftp_short(rest).or_else(|e| bad(&e));
        }
        let path = s.strip_prefix("local:").unwrap_or(s);
        if !path.starts_with('/') {
            return bad("a local repository must be an absolute path");
        }
        Ok(Target::Local(PathBuf::from(path)))
    }

    /// `host/bucket/prefix` after `s3:`, with `http://` or `https://` (the default) before it.
    fn parse_s3(rest: &str) -> Result<Target, String> {
        let (scheme, rest) = match rest.split_once("://") {
            Some(("http", r)) => ("http", r),
            Some(("https", r)) => ("https", r),
            Some((other, _)) => {
                return Err(format!("S3 endpoint scheme {other:?} is not http or https"))
            }
            None => ("https", rest),
        };
        let mut parts = rest.splitn(3, '/');
        let host = parts.next().unwrap_or_default();
        let bucket = parts.next().unwrap_or_default();
        let prefix = parts.next().unwrap_or_default().trim_matches('/');
        if host.is_empty() || host.contains(['@', '?', '#']) {
            return Err("the S3 location has no endpoint host".into());
        }
        if !valid_bucket(bucket) {
            return Err(format!(
                "S3 bucket {bucket:?} is not a bucket name (3 to 63 of a-z, 0-9, '.' and '-')"
            ));
        }
        if prefix.contains(['?', '#']) || prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(format!("S3 prefix {prefix:?} is not a plain path"));
        }
        Ok(Target::S3 {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `[user@]host[:port]/path` after `sftp://`: the path is what follows the first `/`
    /// (restic's rule: `//srv/x` is `/srv/x`, `/x` is `x` in the home directory).
    fn parse_sftp_url(rest: &str) -> Result<Target, String> {
        let (authority, path) = rest
            .split_once('/')
            .ok_or("the SFTP location has no path after the host")?;
        let (user, hostport) = split_user(authority)?;
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or("unclosed '[' in the SFTP host")?;
                (h, after.strip_prefix(':'))
            }
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(format!("SFTP port {p:?} is not a port number"))?,
            ),
            None => None,
        };
        Self::sftp(user, host, port, path)
    }

    /// `[user@]host:path` after `sftp:`.
    fn parse_sftp_short(rest: &str) -> Result<Target, String> {
        let (authority, path) = rest
            .split_once(':')
            .ok_or("the SFTP location needs host:path")?;
        let (user, host) = split_user(authority)?;
        Self::sftp(user, host, None, path)
    }

    fn sftp(
        user: Option<&str>,
        host: &str,
        port: Option<u16>,
        path: &str,
    ) -> Result<Target, String> {
        // The host and user go to ssh as arguments: nothing that ssh could read as an option.
        let name_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
        };
        if !name_ok(host) {
            return Err(format!("SFTP host {host:?} is not a host name or address"));
        }
        if let Some(u) = user {
            if !name_ok(u) || u.contains(':') {
                return Err(format!("SFTP user {u:?} is not a user name"));
            }
        }
        let path = path.trim_end_matches('/');
        if path.is_empty() || path.split('/').any(|p| p == "..") {
            return Err(format!(
                "SFTP path {path:?} must name a directory (no '..')"
            ));
        }
        Ok(Target::Sftp {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

fn split_user(authority: &str) -> Result<(Option<&str>, &str), String> {
    match authority.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => Ok((Some(u), h)),
        Some(_) => Err("the SFTP user before '@' is empty".into()),
        None => Ok((None, authority)),
    }
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && !b.starts_with(['.', '-'])
        && !b.ends_with(['.', '-'])
}

/// The location as restic writes it (no secret is ever part of it).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local(p) => write!(f, "{}", p.display()),
            Target::Sftp {
                user,
                host,
                port,
                path,
            } => {
                let user = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                match port {
                    Some(p) => write!(f, "sftp://{user}{host}:{p}/{path}"),
                    None => write!(f, "sftp:{user}{host}:{path}"),
                }
            }
            Target::S3 {
                endpoint,
                bucket,
                prefix,
            } => {
                write!(f, "s3:{endpoint}/{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{prefix}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_restic_takes() {
        assert_eq!(
            Target::parse("/mnt/backup").unwrap(),
            Target::Local("/mnt/backup".into())
        );
        assert_eq!(
            Target::parse("sftp:backup@nas.lan:/srv/ilot").unwrap(),
            Target::Sftp {
                user: Some("backup".into()),
                host: "nas.lan".into(),
                port: None,
                path: "/srv/ilot".into()
            }
        );
        assert_eq!(
            Target::parse("sftp://root@127.0.0.1:2222//tmp/r/").unwrap(),
            Target::Sftp {
                user: Some("root".into()),
                host: "127.0.0.1".into(),
                port: Some(2222),
                path: "/tmp/r".into()
            }
        );
        assert_eq!(
            Target::parse("s3:http://127.0.0.1:9000/ilot-backups/host1").unwrap(),
            Target::S3 {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "ilot-backups".into(),
                prefix: "host1".into()
            }
        );
        assert_eq!(
            Target::parse("s3:s3.eu-west-3.amazonaws.com/bkt")
                .unwrap()
                .to_string(),
            "s3:https://s3.eu-west-3.amazonaws.com/bkt"
        );
        for s in [
            "sftp://u@[::1]:22//srv",
            "sftp:nas:backups",
            "s3:http://h:1/bucket/a/b",
        ] {
            assert_eq!(Target::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_locations_say_why() {
        for s in [
            "",
            "relative/dir",
            " /mnt",
            "sftp:-oProxyCommand=x:/p",
            "sftp://host",
            "sftp://h:99999//p",
            "sftp:h:/a/../b",
            "s3:http://h/Bad_Bucket",
            "s3:ftp://h/bucket",
            "s3:http:///bucket",
        ] {
            let e = Target::parse(s).unwrap_err();
            assert!(e.contains("give a directory"), "{s}: {e}");
        }
    }
}
