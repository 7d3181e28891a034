//! Email as an alert channel: one message per alert through an SMTP server (lettre; TLS with
//! rustls and the platform's roots), with a password from a 0600 file when the server wants
//! one.

use super::{backoff, ChannelConfig, Outgoing, SendError};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Checks what an email channel needs, for the config's validation.
pub fn validate(ch: &ChannelConfig) -> Result<(), String> {
    let label = ch.label();
    let Some(smtp) = &ch.smtp else {
        return Err(format!("channel {label}: email needs smtp = \"HOST:PORT\""));
    };
    let (_, port) = smtp
        .rsplit_once(':')
        .ok_or_else(|| format!("channel {label}: smtp {smtp:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| format!("channel {label}: smtp {smtp:?} is not HOST:PORT"))?;
    if !matches!(
        ch.tls.as_deref().unwrap_or("starttls"),
        "starttls" | "tls" | "none"
    ) {
        return Err(format!("channel {label}: tls is starttls, tls or none"));
    }
    let from = ch.from.as_deref().unwrap_or_default();
    if from.parse::<lettre::Address>().is_err() {
        return Err(format!("channel {label}: from {from:?} is not an address"));
    }
    if ch.to.is_empty() {
        return Err(format!("channel {label}: give to = [\"you@example.org\"]"));
    }
    for to in &ch.to {
        if to.parse::<lettre::Address>().is_err() {
            return Err(format!("channel {label}: to {to:?} is not an address"));
        }
    }
    if ch.username.is_some() != ch.token_file.is_some() {
        return Err(format!(
            "channel {label}: username and token_file (its password) go together"
        ));
    }
    Ok(())
}

pub async fn send(ch: &ChannelConfig, msg: &Outgoing) -> Result<(), SendError> {
    let smtp = ch.smtp.as_deref().unwrap_or_default();
    let (host, port) = smtp.rsplit_once(':').unwrap_or((smtp, "25"));
    let port: u16 = port.parse().unwrap_or(25);
    let mut builder = match ch.tls.as_deref().unwrap_or("starttls") {
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
        "none" => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            host,
        )),
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
    }
    .map_err(|e| SendError::Refused(e.to_string()))?
    .port(port)
    .timeout(Some(std::time::Duration::from_secs(30)));
    if let (Some(user), Some(file)) = (&ch.username, &ch.token_file) {
        let password = super::read_secret(file).map_err(|e| SendError::Refused(e.message))?;
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    let subject = format!(
        "[ilot {}] {} {}: {}",
        super::hostname(),
        msg.rule,
        msg.state,
        msg.subject
    );
    let mut email = Message::builder()
        .from(
            ch.from
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|_| SendError::Refused("bad from".into()))?,
        )
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &ch.to {
        email = email.to(to
            .parse()
            .map_err(|_| SendError::Refused(format!("bad address {to}")))?);
    }
    let email = email
        .body(msg.text.clone())
        .map_err(|e| SendError::Refused(e.to_string()))?;
    match builder.build().send(email).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::Refused(e.to_string())),
        Err(e) => Err(SendError::Retry(backoff(msg.attempts), e.to_string())),
    }
}
