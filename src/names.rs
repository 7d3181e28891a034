//! Validation of the names users type: instance names, setting keys, domains. Each check returns
//! a message that says what is wrong and what a good value looks like.

use crate::error::{Error, Result};

/// Instance names become part of Docker object names (`ilot-NAME-web`) and of file paths, so they
/// are kept to a DNS-label-like alphabet: no dots, slashes, spaces or shell metacharacters.
pub fn check_instance_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_lowercase()
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::bad_input(format!("invalid instance name {:?}", name)).hint(
            "use 1 to 32 characters: lowercase letters, digits and '-', starting with a letter \
             and not ending with '-' (for example: blog, nextcloud-2)",
        ))
    }
}

/// Keys of settings and secrets in app manifests and in `--set KEY=VALUE`.
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key.as_bytes()[0].is_ascii_lowercase()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A fully qualified host name as used for `--domain`. The error says which rule is broken.
pub fn check_domain(domain: &str) -> Result<()> {
    let why = if domain.len() > 253 {
        Some("it is longer than 253 bytes".to_string())
    } else if !domain.contains('.') {
        Some("it has a single label; give a full name".to_string())
    } else if let Some(l) = domain.split('.').find(|l| l.len() > 63) {
        Some(format!(
            "the label {:?}… is {} bytes long, over 63",
            l.chars().take(8).collect::<String>(),
            l.len()
        ))
    } else if domain.split('.').any(|l| l.is_empty()) {
        Some("it has an empty label (two dots in a row, or a dot at an end)".to_string())
    } else if domain
        .split('.')
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        Some("a label starts or ends with '-'".to_string())
    } else if let Some(c) = domain
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        Some(format!(
            "it contains {c:?}: only letters, digits, '-' and dots are allowed"
        ))
    } else if domain != domain.to_ascii_lowercase() {
        Some("it has capital letters".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(
            Error::bad_input(format!("invalid domain {domain:?}: {why}"))
                .hint("give a lowercase host name such as blog.example.org"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        for good in ["a", "hello", "blog-2", "x1"] {
            assert!(check_instance_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a;b",
            "A",
            "1a",
            "a-",
            "a b",
            "a.b",
            &"a".repeat(33),
        ] {
            assert!(check_instance_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        assert!(check_domain("blog.example.org").is_ok());
        for bad in ["localhost", "a..b", "-a.b", "A.b", "a_b.c", "a.b/c"] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert!(is_key("greeting"));
        assert!(is_key("db_password"));
        assert!(!is_key("Greeting") && !is_key("a-b") && !is_key("1a") && !is_key(""));
    }
}
