<?php
// Renders the part of Roundcube's configuration that differs per install from the container's
// environment (run by `ilot-webmail run` at each start; the output is read by php-fpm's
// workers). Values are written with var_export, so no value can break out of its string.
//
//   WEBMAIL_IMAP          ssl://HOST:PORT of the mail server's IMAPS (required)
//   WEBMAIL_SMTP          tls://HOST:PORT of its submission port, STARTTLS (required)
//   WEBMAIL_DES_KEY       24 characters: encrypts the IMAP password kept in the session (required)
//   WEBMAIL_USERNAME_DOMAIN  the domain added to a login without one (optional)
//   WEBMAIL_TLS_VERIFY    true (default): the mail server's certificate must be valid for its
//                         name; false accepts any (a self-signed server, tests)
//   WEBMAIL_PRODUCT_NAME  the name shown on the login page (optional)

function need(string $name): string {
    $v = getenv($name);
    if ($v === false || $v === '') {
        fwrite(STDERR, "ilot-webmail: $name is not set\n");
        exit(1);
    }
    return $v;
}

$imap = need('WEBMAIL_IMAP');
$smtp = need('WEBMAIL_SMTP');
$key = need('WEBMAIL_DES_KEY');
if (strlen($key) !== 24) {
    fwrite(STDERR, "ilot-webmail: WEBMAIL_DES_KEY must be 24 characters\n");
    exit(1);
}
foreach (['WEBMAIL_IMAP' => $imap, 'WEBMAIL_SMTP' => $smtp] as $name => $url) {
    if (!preg_match('#^(ssl|tls)://[A-Za-z0-9.-]+:[0-9]{1,5}$#', $url)) {
        fwrite(STDERR, "ilot-webmail: $name must be like ssl://mail.example.org:993\n");
        exit(1);
    }
}
$verify = getenv('WEBMAIL_TLS_VERIFY');
if ($verify === false || $verify === '') {
    $verify = 'true';
}
if ($verify !== 'true' && $verify !== 'false') {
    fwrite(STDERR, "ilot-webmail: WEBMAIL_TLS_VERIFY must be true or false\n");
    exit(1);
}
$verify = $verify === 'true';
$tls = ['ssl' => [
    'verify_peer' => $verify,
    'verify_peer_name' => $verify,
    'allow_self_signed' => !$verify,
    // ilot's bundle for the mail server (the public roots, plus the server's own certificate
    // while it is self-signed), else the system's roots.
    'cafile' => getenv('SSL_CERT_FILE') ?: '/etc/ssl/certs/ca-certificates.crt',
]];

// The proxy reaches the container from its network's gateway (the host): the default route.
$proxies = [];
foreach (@file('/proc/net/route') ?: [] as $line) {
    $f = preg_split('/\s+/', trim($line));
    if (count($f) > 2 && $f[1] === '00000000' && $f[2] !== '00000000') {
        $proxies[] = long2ip(unpack('V', pack('H*', $f[2]))[1]);
    }
}

$config = [
    'imap_host' => $imap,
    'smtp_host' => $smtp,
    'imap_conn_options' => $tls,
    'smtp_conn_options' => $tls,
    'des_key' => $key,
    'proxy_whitelist' => $proxies,
];
$domain = getenv('WEBMAIL_USERNAME_DOMAIN');
if ($domain !== false && $domain !== '') {
    $config['username_domain'] = $domain;
    $config['mail_domain'] = $domain;
}
$name = getenv('WEBMAIL_PRODUCT_NAME');
if ($name !== false && $name !== '') {
    $config['product_name'] = $name;
}

echo "<?php\n// Rendered by ilot-webmail at start from the container's environment.\n";
foreach ($config as $k => $v) {
    echo '$config[' . var_export($k, true) . '] = ' . var_export($v, true) . ";\n";
}
