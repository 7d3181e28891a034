<?php
// Roundcube's configuration in ilot/webmail (images/README.md, "ilot/webmail:1.0"): Debian's
// defaults (defaults.inc.php) plus what ilot needs. What differs per install (the mail server,
// the key, the proxy's address) is rendered at each start from the container's environment
// into /run/ilot-webmail/config.inc.php by `ilot-webmail run`, included last.

$config = [];

// SQLite on the data volume.
$config['db_dsnw'] = 'sqlite:////data/roundcube.db?mode=0600';

// Users log in with their own mail account; sending uses the same login.
$config['smtp_user'] = '%u';
$config['smtp_pass'] = '%p';
$config['login_autocomplete'] = 0;

// Nothing from elsewhere: no plugins, no spell checker (Roundcube's default sends the text to
// a remote service), no support link, remote images in messages blocked unless the user asks
// for them each time, no version on the login page.
$config['plugins'] = [];
$config['enable_spellcheck'] = false;
$config['support_url'] = '';
$config['show_images'] = 0;
$config['display_product_info'] = 1;
$config['product_name'] = 'Webmail';
$config['useragent'] = 'Roundcube Webmail';
$config['enable_installer'] = false;
$config['skin'] = 'elastic';

// Served over HTTPS by ilot's proxy: secure cookies, links and redirects to https://. Who the
// proxy is (the only peer whose X-Forwarded-For and -Proto are believed) is in the rendered part.
$config['use_https'] = true;
$config['session_samesite'] = 'Lax';

// Logs on the container's output (php-fpm passes the workers' output on), where
// `ilot app logs` and the guard read them.
$config['log_driver'] = 'stdout';
$config['log_date_format'] = 'Y-m-d H:i:s O';
$config['temp_dir'] = '/var/lib/roundcube/temp/';

include '/run/ilot-webmail/config.inc.php';
