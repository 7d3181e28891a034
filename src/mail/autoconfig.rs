//! Client autoconfiguration: the documents mail clients fetch to find their servers from an
//! address alone, served by the proxy for each mail domain (src/daemon/mod.rs,
//! `refresh_routes`), with the DNS names they are fetched from (src/dns):
//!
//! - Thunderbird (and K-9, FairEmail...): `https://autoconfig.DOMAIN/mail/config-v1.1.xml`,
//!   the Mozilla ISPDB format;
//! - Outlook: `https://autodiscover.DOMAIN/autodiscover/autodiscover.xml` (POST or GET), the
//!   "POX" Autodiscover response (MS-OXDSCLI), and `_autodiscover._tcp` SRV;
//! - Apple Mail on iOS and macOS: `https://autoconfig.DOMAIN/mail/apple.mobileconfig`, a
//!   configuration profile without the address, which the device asks for when installing it.
//!
//! All of them name the server's implicit-TLS ports first (RFC 8314): IMAPS and submissions,
//! then submission with STARTTLS; logins are the full address, with a normal password.

/// Where the clients reach a mail server: its name (the certificate's) and its public ports.
pub struct Endpoints<'a> {
    pub host: &'a str,
    pub imaps: u16,
    pub submissions: u16,
    pub submission: u16,
}

/// The paths of the documents, on autoconfig.DOMAIN and autodiscover.DOMAIN.
pub const THUNDERBIRD_PATH: &str = "/mail/config-v1.1.xml";
pub const APPLE_PATH: &str = "/mail/apple.mobileconfig";
/// Outlook asks with either case.
pub const AUTODISCOVER_PATHS: [&str; 2] = [
    "/autodiscover/autodiscover.xml",
    "/Autodiscover/Autodiscover.xml",
];

/// XML-escapes text (names here are checked domain names, but nothing is taken on trust).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Mozilla's autoconfig format (the ISPDB's `clientConfig` version 1.1).
pub fn thunderbird(domain: &str, e: &Endpoints) -> String {
    let (d, h) = (esc(domain), esc(e.host));
    let server = |kind: &str, port: u16, socket: &str| {
        format!(
            "    <{kind} type=\"{}\">\n      <hostname>{h}</hostname>\n      <port>{port}</port>\n      \
             <socketType>{socket}</socketType>\n      <authentication>password-cleartext</authentication>\n      \
             <username>%EMAILADDRESS%</username>\n    </{kind}>\n",
            if kind == "incomingServer" { "imap" } else { "smtp" }
        )
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  \
         <emailProvider id=\"{d}\">\n    <domain>{d}</domain>\n    <displayName>{d}</displayName>\n    \
         <displayShortName>{d}</displayShortName>\n{}{}{}  </emailProvider>\n</clientConfig>\n",
        server("incomingServer", e.imaps, "SSL"),
        server("outgoingServer", e.submissions, "SSL"),
        server("outgoingServer", e.submission, "STARTTLS"),
    )
}

/// Outlook's Autodiscover (POX) answer: the same for every address of the domain, so the
/// request body need not be read; the login is the address the user typed.
pub fn autodiscover(e: &Endpoints) -> String {
    let h = esc(e.host);
    let protocol = |kind: &str, port: u16, encryption: &str| {
        format!(
            "      <Protocol>\n        <Type>{kind}</Type>\n        <Server>{h}</Server>\n        \
             <Port>{port}</Port>\n        <DomainRequired>off</DomainRequired>\n        \
             <SPA>off</SPA>\n        <Encryption>{encryption}</Encryption>\n        \
             <AuthRequired>on</AuthRequired>\n      </Protocol>\n"
        )
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  \
         <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    \
         <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n{}{}    \
         </Account>\n  </Response>\n</Autodiscover>\n",
        protocol("IMAP", e.imaps, "SSL"),
        protocol("SMTP", e.submissions, "SSL"),
    )
}

/// An Apple configuration profile (com.apple.mail.managed) for an account of the domain. The
/// address and password are left out: the device asks for them when the profile is installed.
/// Its UUIDs are derived from the domain, so a profile installed again replaces the first.
pub fn apple(domain: &str, e: &Endpoints) -> String {
    let (d, h) = (esc(domain), esc(e.host));
    let uuid = |what: &str| {
        let x = crate::state::hex(&<sha2::Sha256 as sha2::Digest>::digest(
            format!("ilot mobileconfig {what} {domain}").as_bytes(),
        ));
        format!(
            "{}-{}-{}-{}-{}",
            &x[0..8],
            &x[8..12],
            &x[12..16],
            &x[16..20],
            &x[20..32]
        )
        .to_ascii_uppercase()
    };
    let reverse: Vec<&str> = domain.rsplit('.').collect();
    let id = esc(&reverse.join("."));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
<plist version=\"1.0\">\n<dict>\n\
  <key>PayloadContent</key>\n  <array>\n    <dict>\n\
      <key>EmailAccountDescription</key><string>{d}</string>\n\
      <key>EmailAccountType</key><string>EmailTypeIMAP</string>\n\
      <key>IncomingMailServerAuthentication</key><string>EmailAuthPassword</string>\n\
      <key>IncomingMailServerHostName</key><string>{h}</string>\n\
      <key>IncomingMailServerPortNumber</key><integer>{}</integer>\n\
      <key>IncomingMailServerUseSSL</key><true/>\n\
      <key>OutgoingMailServerAuthentication</key><string>EmailAuthPassword</string>\n\
      <key>OutgoingMailServerHostName</key><string>{h}</string>\n\
      <key>OutgoingMailServerPortNumber</key><integer>{}</integer>\n\
      <key>OutgoingMailServerUseSSL</key><true/>\n\
      <key>OutgoingPasswordSameAsIncomingPassword</key><true/>\n\
      <key>PayloadDisplayName</key><string>Mail of {d}</string>\n\
      <key>PayloadIdentifier</key><string>{id}.ilot.mail.account</string>\n\
      <key>PayloadType</key><string>com.apple.mail.managed</string>\n\
      <key>PayloadUUID</key><string>{}</string>\n\
      <key>PayloadVersion</key><integer>1</integer>\n\
    </dict>\n  </array>\n\
  <key>PayloadDisplayName</key><string>Mail of {d}</string>\n\
  <key>PayloadIdentifier</key><string>{id}.ilot.mail</string>\n\
  <key>PayloadRemovalDisallowed</key><false/>\n\
  <key>PayloadType</key><string>Configuration</string>\n\
  <key>PayloadUUID</key><string>{}</string>\n\
  <key>PayloadVersion</key><integer>1</integer>\n\
</dict>\n</plist>\n",
        e.imaps,
        e.submissions,
        uuid("account"),
        uuid("profile"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Endpoints = Endpoints {
        host: "mail.example.org",
        imaps: 993,
        submissions: 465,
        submission: 587,
    };

    #[test]
    fn each_client_gets_the_servers_names_and_ports() {
        let t = thunderbird("example.org", &E);
        assert!(t.contains("<hostname>mail.example.org</hostname>"));
        assert!(t.contains("<port>993</port>") && t.contains("<socketType>SSL</socketType>"));
        assert!(t.contains("<port>587</port>") && t.contains("<socketType>STARTTLS</socketType>"));
        assert!(t.contains("<username>%EMAILADDRESS%</username>"));
        let a = autodiscover(&E);
        assert!(a.contains("<Server>mail.example.org</Server>") && a.contains("<Port>465</Port>"));
        let p = apple("example.org", &E);
        assert!(p.contains("<string>org.example.ilot.mail</string>"));
        assert!(p.contains("<integer>993</integer>") && p.contains("<integer>465</integer>"));
        assert_eq!(p, apple("example.org", &E), "stable UUIDs");
        assert_ne!(p, apple("example.net", &E));
        assert_eq!(esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
