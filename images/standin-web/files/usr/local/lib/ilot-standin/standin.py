#!/usr/bin/env python3
"""ilot/standin-web: plays Nextcloud, PeerTube or Ghost in ilot's tests.

The role comes from the environment the upstream image's contract gives it (NEXTCLOUD_ADMIN_USER,
PEERTUBE_WEBSERVER_HOSTNAME, or url + database__client). Like upstream, the app waits for its
database, creates its tables and (Nextcloud, PeerTube) its admin once, then serves HTTP. Besides
the few upstream endpoints the manifests use (health checks, Ghost's setup API, PeerTube's
upload), /.ilot-standin/ holds test endpoints: status, login, mail. See images/README.md.

    standin.py serve    the web role
    standin.py cron     Nextcloud's /cron.sh: a heartbeat row in cron_runs every few seconds
"""
import datetime, hashlib, hmac, http.cookies, http.server, ipaddress, json, os, secrets
import signal, smtplib, socket, ssl, sys, time, traceback
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from urllib.parse import urlsplit

E = os.environ
NC_VERSION = "31.0.0.0"
VOLUME = {"nextcloud": "/var/www/html", "peertube": "/data", "ghost": "/var/lib/ghost/content"}
PORT = {"nextcloud": 80, "peertube": 9000, "ghost": 2368}


def log(msg):
    print(msg, flush=True)


def flag(value, default=False):
    """An upstream boolean ("true"/"false", as JSON or shell)."""
    if value is None or value == "":
        return default
    return str(value).strip().lower() in ("1", "true", "yes", "on")


PRIVATE_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]  # nextcloud/docker's remoteip.conf


def valid_ip(a):
    try:
        ipaddress.ip_address(a)
        return True
    except ValueError:
        return False


def in_nets(a, nets):
    try:
        ip = ipaddress.ip_address(a)
        return any(ip in ipaddress.ip_network(n, strict=False) for n in nets)
    except ValueError:
        return False


def strip_port(a):
    """1.2.3.4:5 -> 1.2.3.4; [::1]:5 -> ::1 (Nextcloud's getRemoteAddress does the same)."""
    if a.startswith("["):
        return a[1:].split("]")[0]
    return a.rsplit(":", 1)[0] if a.count(":") == 1 else a


def express_trust(spec):
    """proxy-addr's trust function for a JSON list of names and CIDRs (PeerTube's trust_proxy)."""
    names = {"loopback": ["127.0.0.0/8", "::1/128"], "linklocal": ["169.254.0.0/16", "fe80::/10"],
             "uniquelocal": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]}
    try:
        items = json.loads(spec)
    except ValueError:
        items = [spec]
    nets = [n for i in (items if isinstance(items, list) else [items]) for n in names.get(i, [i])]
    return lambda a: in_nets(a, nets)


def detect_role():
    if E.get("NEXTCLOUD_ADMIN_USER"):
        return "nextcloud"
    if E.get("PEERTUBE_WEBSERVER_HOSTNAME"):
        return "peertube"
    if E.get("url") and E.get("database__client"):
        return "ghost"
    return None


# --- configuration: each role's upstream variables, parsed once --------------------------------

def config(role):
    """The role's settings: db, redis, smtp and what /.ilot-standin/status reports."""
    g = E.get
    if role == "nextcloud":
        domains = g("NEXTCLOUD_TRUSTED_DOMAINS", "").split()
        secure = g("SMTP_SECURE", "").lower()
        domain = g("MAIL_DOMAIN") or g("OVERWRITEHOST") or (domains[0] if domains else "localhost")
        return dict(
            db=dict(kind="postgres", host=g("POSTGRES_HOST", "db"), port=5432, user=g("POSTGRES_USER", ""),
                    password=g("POSTGRES_PASSWORD", ""), database=g("POSTGRES_DB", "nextcloud")),
            redis=dict(host=g("REDIS_HOST"), port=int(g("REDIS_HOST_PORT", "6379")),
                       password=g("REDIS_HOST_PASSWORD")) if g("REDIS_HOST") else None,
            admin=g("NEXTCLOUD_ADMIN_USER"), admin_password=g("NEXTCLOUD_ADMIN_PASSWORD", ""),
            smtp=dict(host=g("SMTP_HOST"), port=int(g("SMTP_PORT") or (465 if secure == "ssl" else 25)),
                      mode={"ssl": "ssl", "tls": "starttls"}.get(secure, "opportunistic"),
                      user=g("SMTP_NAME"), password=g("SMTP_PASSWORD"), authtype=g("SMTP_AUTHTYPE", "LOGIN"),
                      sender=f"{g('MAIL_FROM_ADDRESS') or 'nextcloud'}@{domain}"),
            trusted_proxies=g("TRUSTED_PROXIES", "").split(),
            settings=dict(trusted_domains=domains, overwritehost=g("OVERWRITEHOST"),
                          overwriteprotocol=g("OVERWRITEPROTOCOL"), overwritecliurl=g("OVERWRITECLIURL"),
                          trusted_proxies=g("TRUSTED_PROXIES", "").split()))
    if role == "peertube":
        pt_check_config()
        if not g("PEERTUBE_SECRET"):
            sys.exit("standin-web (peertube): PEERTUBE_SECRET is not set; PeerTube refuses to start without a secret")
        try:  # node-config refuses a NODE_CONFIG that is not JSON, and so do we
            node = json.loads(g("NODE_CONFIG") or "{}")
        except ValueError as e:
            sys.exit(f"standin-web (peertube): NODE_CONFIG is not JSON: {e}")
        pick = lambda var, path, default: (  # custom env variable > NODE_CONFIG > default
            json.loads(g(var)) if g(var) else dig(node, path, default))
        return dict(
            db=dict(kind="postgres", host=g("PEERTUBE_DB_HOSTNAME", "db"), port=int(g("PEERTUBE_DB_PORT") or 5432),
                    user=g("PEERTUBE_DB_USERNAME", "peertube"), password=g("PEERTUBE_DB_PASSWORD", ""),
                    database="peertube" + g("PEERTUBE_DB_SUFFIX", "")),
            redis=dict(host=g("PEERTUBE_REDIS_HOSTNAME", "redis"), port=int(g("PEERTUBE_REDIS_PORT") or 6379),
                       password=g("PEERTUBE_REDIS_AUTH")),
            admin="root", admin_password=g("PT_INITIAL_ROOT_PASSWORD", ""),
            smtp=dict(host=g("PEERTUBE_SMTP_HOSTNAME"), port=int(g("PEERTUBE_SMTP_PORT") or 465),
                      mode="ssl" if flag(g("PEERTUBE_SMTP_TLS"), True) else
                      "plain" if flag(g("PEERTUBE_SMTP_DISABLE_STARTTLS")) else "opportunistic",
                      user=g("PEERTUBE_SMTP_USERNAME"), password=g("PEERTUBE_SMTP_PASSWORD"), authtype="",
                      sender=g("PEERTUBE_SMTP_FROM", "")),
            trusted_proxies=[],
            settings=dict(webserver=dict(hostname=g("PEERTUBE_WEBSERVER_HOSTNAME"),
                                         port=int(g("PEERTUBE_WEBSERVER_PORT") or 443),
                                         https=flag(g("PEERTUBE_WEBSERVER_HTTPS"), True)),
                          instance_name=g("PEERTUBE_INSTANCE_NAME") or dig(node, "instance.name", "PeerTube"),
                          signup=flag(pick("PEERTUBE_SIGNUP_ENABLED", "signup.enabled", False)),
                          transcoding=flag(dig(node, "transcoding.enabled", True)),
                          live=flag(dig(node, "live.enabled", False)),
                          admin_email=g("PEERTUBE_ADMIN_EMAIL"), node_config=node,
                          trust_proxy=g("PEERTUBE_TRUST_PROXY")))
    if role == "ghost":
        if g("database__client") != "mysql":
            sys.exit(f"standin-web (ghost): database__client={g('database__client')!r}: only mysql is played")
        c = lambda k, d=None: g("database__connection__" + k, d)
        m = lambda k, d=None: g("mail__options__" + k, d)
        return dict(
            db=dict(kind="mysql", host=c("host", "db"), port=int(c("port") or 3306), user=c("user", "ghost"),
                    password=c("password", ""), database=c("database", "ghost")),
            redis=None, admin=None, admin_password="",
            smtp=dict(host=m("host"), port=int(m("port") or 587),
                      mode="ssl" if flag(m("secure")) else "opportunistic",
                      user=m("auth__user"), password=m("auth__pass"), authtype="",
                      sender=g("mail__from", ""), transport=g("mail__transport", "")),
            trusted_proxies=None,  # Ghost trusts any proxy
            # nconf's env with parseValues: "false" is false; verification is on only for true
            # (session/index.js: config.get('security:staffDeviceVerification') !== true -> off).
            settings=dict(url=g("url"), staff_device_verification=(
                g("security__staffDeviceVerification", "true").strip().lower() == "true")))
    raise ValueError(role)


def pt_check_config():
    """checker-after-init.ts::checkLiveConfig, the part the manifest's settings reach: PeerTube
    exits at start with this message, before it listens."""
    try:
        node = json.loads(E.get("NODE_CONFIG") or "{}")
    except ValueError:
        return  # config() says so
    if flag(dig(node, "live.enabled", False)):
        if flag(dig(node, "live.allow_replay", True)) and not flag(dig(node, "transcoding.enabled", True)):
            sys.exit("Live allow replay cannot be enabled if transcoding is not enabled.")
        if not (flag(dig(node, "live.rtmp.enabled", True)) or flag(dig(node, "live.rtmps.enabled", False))):
            sys.exit("You must enable at least RTMP or RTMPS")


def dig(tree, path, default):
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


# --- the database: one short connection per use, so a server's shutdown never waits for us -----

class Db:
    def __init__(self, c):
        self.c = c

    def connect(self):
        c = self.c
        if c["kind"] == "postgres":
            import psycopg2
            return psycopg2.connect(host=c["host"], port=c["port"], user=c["user"], password=c["password"],
                                    dbname=c["database"], connect_timeout=3)
        import pymysql
        return pymysql.connect(host=c["host"], port=c["port"], user=c["user"], password=c["password"],
                               database=c["database"], connect_timeout=3, charset="utf8mb4")

    def run(self, *statements):
        """Runs (sql, args) pairs in one transaction; returns the rows of the last."""
        conn = self.connect()
        try:
            rows = None
            with conn.cursor() as cur:
                for sql, args in statements:
                    cur.execute(sql, args)
                    rows = cur.fetchall() if cur.description else None
            conn.commit()
            return rows
        finally:
            conn.close()

    def one(self, sql, args=()):
        rows = self.run((sql, args))
        return rows[0] if rows else None

    def schema(self):
        self.run(*[(s, ()) for s in (
            "CREATE TABLE IF NOT EXISTS standin_users (name VARCHAR(190) PRIMARY KEY,"
            " password_hash VARCHAR(200) NOT NULL, created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
            "CREATE TABLE IF NOT EXISTS standin_settings (k VARCHAR(190) PRIMARY KEY, v TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS standin_sessions (token VARCHAR(64) PRIMARY KEY, name VARCHAR(190) NOT NULL)",
            self.cron_table_sql())])

    def cron_table_sql(self):
        serial = "SERIAL" if self.c["kind"] == "postgres" else "INT AUTO_INCREMENT"
        return (f"CREATE TABLE IF NOT EXISTS cron_runs (id {serial} PRIMARY KEY,"
                " ran_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, host VARCHAR(255) NOT NULL)")

    def tables(self):
        if self.c["kind"] == "postgres":
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        else:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1"
        return [r[0] for r in self.run((sql, ()))]

    def get(self, key, default=None):
        row = self.one("SELECT v FROM standin_settings WHERE k = %s", (key,))
        return row[0] if row else default

    def put(self, key, value):
        if self.c["kind"] == "postgres":
            sql = "INSERT INTO standin_settings (k, v) VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
        else:
            sql = "INSERT INTO standin_settings (k, v) VALUES (%s, %s) ON DUPLICATE KEY UPDATE v = VALUES(v)"
        self.run((sql, (key, str(value))))

    def add_user(self, name, password):
        self.run(("INSERT INTO standin_users (name, password_hash) VALUES (%s, %s)", (name, hash_password(password))))

    def check_user(self, name, password):
        row = self.one("SELECT password_hash FROM standin_users WHERE name = %s", (name,))
        return row is not None and verify_password(password, row[0])


def hash_password(password, salt=None, rounds=100_000):
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), rounds).hex()
    return f"pbkdf2_sha256${rounds}${salt}${digest}"


def verify_password(password, stored):
    _, rounds, salt, _ = stored.split("$")
    return hmac.compare_digest(hash_password(password, salt, int(rounds)), stored)


def redis_ping(r):
    import redis
    try:
        return redis.Redis(host=r["host"], port=r["port"], password=r["password"] or None,
                           socket_timeout=3, socket_connect_timeout=3).ping() is True
    except Exception:
        return False


# --- first start: wait for the database, create the tables and the admin once ------------------

def nc_try_create_db_user():
    """AbstractDatabase::initialize: setup_create_db_user (NC_ env first, as Config::getValue),
    default true, off only for false or the string 'false'."""
    v = E.get("NC_setup_create_db_user", nc_config().get("setup_create_db_user", True))
    return v is not False and v != "false"


def nc_setup_database(cfg, db):
    """Setup/PostgreSQL.php::setupDatabase, at the first install only: when the installer's
    user may create roles (POSTGRES_USER is the superuser) and setup_create_db_user allows it,
    Nextcloud makes its own role oc_admin with a random password, grants it the database, and
    from then on config.php names that role: the tables are created as, and belong to, it."""
    if not nc_try_create_db_user():
        return db
    row = db.one("SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user")
    if not (row and row[0]):
        return db
    from psycopg2 import sql
    name, i = "oc_admin", 1
    while db.one("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)):
        i += 1
        name = f"oc_admin{i}"
    password = secrets.token_urlsafe(22)[:30]
    ident = sql.Identifier
    db.run((sql.SQL("CREATE USER {} CREATEDB PASSWORD %s").format(ident(name)), (password,)),
           (sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident(cfg["db"]["database"]), ident(name)), ()),
           (sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(ident(name)), ()))
    log(f"nextcloud: created the database role {name} (setup_create_db_user)")
    cfg["db"] = {**cfg["db"], "user": name, "password": password}
    return Db(cfg["db"])


def nc_db(fallback):
    """The database Nextcloud uses once installed: config.php's dbuser/dbpassword/dbhost/dbname,
    each overridden by its NC_ variable (Config::getValue reads the environment first)."""
    c = dict(nc_config().get("db") or fallback)
    for key, var in (("user", "NC_dbuser"), ("password", "NC_dbpassword"), ("host", "NC_dbhost"),
                     ("database", "NC_dbname")):
        if var in E:
            c[key] = E[var]
    return c


def install(role, cfg, db):
    last, since = None, 0.0
    while True:
        try:
            if role == "nextcloud":
                if nc_config().get("db") is None:  # the first install: config.php not written yet
                    db = nc_setup_database(cfg, db)
                    nc_write_config({**nc_config(), "db": cfg["db"]})
                cfg["db"] = nc_db(cfg["db"])
                db = Db(cfg["db"])
            db.schema()
            break
        except Exception as e:  # not up yet, or a concurrent CREATE (the cron container)
            msg = f"{type(e).__name__}: {str(e).strip()[:200]}"
            if msg != last or time.monotonic() - since > 10:  # a line per new error, or every 10 s
                log(f"{role}: waiting for the database at {cfg['db']['host']}: {msg}")
                last, since = msg, time.monotonic()
            time.sleep(0.5)
    if cfg["admin"] and db.get("_installed") is None:  # only the first start, like upstream
        password = cfg["admin_password"]
        if not password:
            password = secrets.token_urlsafe(12)
            if role != "peertube":
                log(f"{role}: generated the {cfg['admin']} password: {password}")
        db.add_user(cfg["admin"], password)
        log(f"{role}: installed, admin {cfg['admin']}")
        if role == "peertube":  # installer.ts::createOAuthAdminIfNotExist logs it, however it came
            pt_log(f"Username: {cfg['admin']}")
            pt_log(f"User password: {password}")
    if db.get("_installed") is None:
        db.put("_installed", datetime.datetime.now(datetime.timezone.utc).isoformat())
        if role == "ghost":
            db.put("title", "Ghost")
            db.put("members_signup_access", "all")
    # The marker in the data volume (and, for the cron container, where the database is).
    vol = VOLUME[role]
    try:
        marker = os.path.join(vol, ".ilot-standin-installed")
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                json.dump({"role": role, "installed_at": db.get("_installed")}, f)
        if role == "nextcloud":  # the data directory (datadirectory), www-data's
            os.makedirs(os.path.join(vol, "data"), mode=0o770, exist_ok=True)
        if role == "peertube":
            os.makedirs("/data/videos", exist_ok=True)
        if os.geteuid() == 0:  # what we made belongs to the volume's owner, as upstream's chown does
            st = os.stat(vol)
            for dirpath, dirs, files in os.walk(vol):
                for name in dirs + files:
                    os.lchown(os.path.join(dirpath, name), st.st_uid, st.st_gid)
    except OSError as e:
        sys.exit(f"{role}: cannot write the data volume {vol} (uid {os.getuid()}): {e}")
    while cfg["redis"] and role == "peertube" and not redis_ping(cfg["redis"]):
        log(f"{role}: waiting for Redis at {cfg['redis']['host']}")
        time.sleep(1)
    return db


# --- mail through the role's SMTP settings ------------------------------------------------------

def send_mail(role, smtp, to):
    if smtp.get("transport", "smtp").lower() not in ("smtp", ""):
        raise RuntimeError(f"mail transport {smtp['transport']!r} is not SMTP")
    if not smtp["host"]:
        raise RuntimeError("no SMTP host configured")
    sender = parseaddr(smtp["sender"])[1] or smtp["sender"]
    msg = EmailMessage()
    msg["From"] = formataddr((f"{role} (ilot stand-in)", sender))
    msg["To"] = to
    msg["Subject"] = f"ilot stand-in test from {role}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(f"A test message sent by ilot/standin-web playing {role}.\n")
    ctx = mail_tls_context(role)
    # The server's certificate is checked against the name the app connects to, as upstream's
    # clients do (SNI and the name check use smtp["host"]).
    if smtp["mode"] == "ssl":
        s = smtplib.SMTP_SSL(smtp["host"], smtp["port"], timeout=20, context=ctx)
    else:
        s = smtplib.SMTP(smtp["host"], smtp["port"], timeout=20)
    try:
        s.ehlo()
        if smtp["mode"] in ("starttls", "opportunistic") and s.has_extn("starttls"):
            s.starttls(context=ctx)
            s.ehlo()
        elif smtp["mode"] == "starttls":
            raise RuntimeError("the server offers no STARTTLS")
        if smtp["user"]:
            s.user, s.password = smtp["user"], smtp["password"] or ""
            kind = (smtp["authtype"] or "").upper()
            if kind == "LOGIN":
                s.auth("LOGIN", s.auth_login)
            elif kind == "PLAIN":
                s.auth("PLAIN", s.auth_plain)
            else:
                s.login(smtp["user"], smtp["password"] or "")
        s.send_message(msg, from_addr=sender, to_addrs=[to])
    finally:
        try:
            s.quit()
        except Exception:
            s.close()
    return sender


def mail_tls_context(role):
    """How each app's mail client verifies the server, as upstream's does (images/README.md):
    Nextcloud's Symfony Mailer, PHP streams with verify_peer and verify_peer_name on, trusting
    OpenSSL's default paths (SSL_CERT_FILE when set); Ghost's and PeerTube's nodemailer, Node's
    tls.connect with rejectUnauthorized (its default), trusting Node's roots plus
    NODE_EXTRA_CA_CERTS and ignoring SSL_CERT_FILE."""
    if role == "nextcloud":
        return ssl.create_default_context()  # set_default_verify_paths: SSL_CERT_FILE, else the system's
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ctx.load_verify_locations("/etc/ssl/certs/ca-certificates.crt")  # Node's bundled roots, as near as Debian has
    extra = E.get("NODE_EXTRA_CA_CERTS")
    if extra:
        try:
            ctx.load_verify_locations(extra)
        except (OSError, ssl.SSLError) as e:  # Node warns and goes on without them
            log(f"{role}: Warning: Ignoring extra certs from `{extra}`, load failed: {e}")
    return ctx


# --- HTTP ---------------------------------------------------------------------------------------

class Reply(Exception):
    """Raised by a handler to answer at once: (status, JSON body[, headers])."""
    def __init__(self, status, body, headers=()):
        self.status, self.body, self.headers = status, body, headers


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ilot-standin"
    sys_version = ""

    def log_message(self, fmt, *args):  # one line per request is ours (see reply)
        pass

    def do_GET(self): self.dispatch()
    def do_POST(self): self.dispatch()
    def do_PUT(self): self.dispatch()
    def do_DELETE(self): self.dispatch()

    def dispatch(self):
        self.body_read = False
        try:
            status, body, headers = APP.handle(self)
        except Reply as r:
            status, body, headers = r.status, r.body, r.headers
        except Exception as e:
            traceback.print_exc()
            status, body, headers = 500, {"error": f"{type(e).__name__}: {e}"}, ()
        self.reply(status, body, headers)

    def reply(self, status, body, headers=()):
        data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        has_body = self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers
        # An early answer (a refusal before the body was looked at) drains a small unread body
        # first, as real servers do: closing on unread bytes resets the connection, and the
        # reset can destroy the answer on its way.
        if has_body and not self.body_read and int(self.headers.get("Content-Length") or 0) <= 1 << 20:
            try:
                for _ in self.chunks():
                    pass
            except (ConnectionError, ValueError, OSError):
                self.body_read = False
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        if has_body and not self.body_read:  # an unread body: the connection cannot be reused
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        log(f'{APP.role} {APP.client_ip(self)} "{self.command} {self.path}" {status} {len(data)}')

    def chunks(self, size=1 << 20):
        """The request body, streamed (Content-Length or chunked)."""
        self.body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                while n:
                    part = self.rfile.read(min(n, size))
                    if not part:
                        raise ConnectionError("body cut short")
                    n -= len(part)
                    yield part
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                part = self.rfile.read(min(left, size))
                if not part:
                    raise ConnectionError("body cut short")
                left -= len(part)
                yield part

    def json_body(self, limit=1 << 20):
        data = b""
        for part in self.chunks():
            data += part
            if len(data) > limit:
                raise Reply(413, {"error": "body too large"})
        try:
            body = json.loads(data or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Reply(400, {"error": "the body is not a JSON object"})
        return body


class App:
    def __init__(self, role):
        self.role, self.cfg = role, config(role)
        self.db = Db(self.cfg["db"])

    def client_ip(self, h):
        """The client address the app believes, computed as upstream does (images/README.md):
        Nextcloud: the image's Apache mod_remoteip first (X-Real-IP from a private peer, unless
        APACHE_DISABLE_REWRITE_IP), then Request::getRemoteAddress (X-Forwarded-For right to
        left, skipping trusted_proxies, when REMOTE_ADDR is one). PeerTube: Express's trust
        proxy with its list. Ghost: Express's trust proxy = true (the leftmost address)."""
        peer = h.client_address[0]
        xff = [a.strip() for v in h.headers.get_all("X-Forwarded-For") or [] for a in v.split(",") if a.strip()]
        if self.role == "nextcloud":
            remote = peer
            real = (h.headers.get("X-Real-IP") or "").strip()
            if "APACHE_DISABLE_REWRITE_IP" not in E and in_nets(peer, PRIVATE_V4) and valid_ip(real):
                remote = real
            nets = self.cfg["trusted_proxies"]
            if in_nets(remote, nets):
                for a in reversed(xff):
                    a = strip_port(a)
                    if valid_ip(a) and not in_nets(a, nets):
                        return a
            return remote
        if self.role == "peertube":
            trusted = express_trust(E.get("PEERTUBE_TRUST_PROXY") or '["loopback"]')
            chain = [peer] + list(reversed(xff))
            for a in chain:
                if not trusted(a):
                    return a
            return chain[-1]
        return xff[0] if xff else peer  # ghost: trust proxy = true

    def handle(self, h):
        path = urlsplit(h.path).path
        method = h.command
        if self.role == "nextcloud":
            self.trusted_domain(h)
        if self.role == "ghost" and not path.startswith("/.ilot-standin/"):
            self.ghost_https(h, path)
        routes = {
            ("GET", "/"): lambda h: (200, f"{self.role} (ilot stand-in)\n".encode(), ()),
            ("GET", "/.ilot-standin/status"): self.status,
            ("POST", "/.ilot-standin/login"): self.login,
            ("POST", "/.ilot-standin/mail"): self.mail,
            ("GET", "/status.php"): self.nc_status,
            ("GET", "/api/v1/config"): self.pt_config,
            ("POST", "/api/v1/videos/upload"): self.pt_upload,
            ("GET", "/ghost/api/admin/site"): self.ghost_site,
            ("GET", "/ghost/api/admin/authentication/setup"): self.ghost_setup_state,
            ("POST", "/ghost/api/admin/authentication/setup"): self.ghost_setup,
            ("POST", "/ghost/api/admin/session"): self.ghost_session,
            ("GET", "/ghost/api/admin/settings"): self.ghost_settings,
            ("PUT", "/ghost/api/admin/settings"): self.ghost_settings,
        }
        # Nextcloud in maintenance mode answers 503 but for status.php, as upstream does.
        if self.role == "nextcloud" and path != "/status.php" and not path.startswith("/.ilot-standin/") \
                and nc_config().get("maintenance"):
            return 503, b"Nextcloud is in maintenance mode\n", ()
        prefix = {"nextcloud": "/status.php", "peertube": "/api/", "ghost": "/ghost/"}[self.role]
        key = (method, path.rstrip("/") or "/")
        if key not in routes or not (key[1].startswith(("/.ilot-standin/", prefix)) or key[1] == "/"):
            return 404, {"error": f"not found: {method} {path}"}, ()
        return routes[key](h)

    # Nextcloud --------------------------------------------------------------------------------

    def trusted_domain(self, h):
        host = h.headers.get("Host", "")
        if host.startswith("["):  # [IPv6]:port
            host = host[1:].split("]")[0]
        elif host.count(":") == 1:  # name:port
            host = host.split(":")[0]
        if host not in self.cfg["settings"]["trusted_domains"] + ["localhost", "127.0.0.1"]:
            raise Reply(400, b"Access through untrusted domain\n")

    def nc_status(self, h):
        return 200, {"installed": True, "maintenance": bool(nc_config().get("maintenance")), "needsDbUpgrade": False, "version": NC_VERSION,
                     "versionstring": NC_VERSION.rsplit(".", 1)[0], "edition": "",
                     "productname": "Nextcloud (ilot stand-in)", "extendedSupport": False}, ()

    # PeerTube ---------------------------------------------------------------------------------

    def pt_config(self, h):
        s = self.cfg["settings"]
        return 200, {"instance": {"name": s["instance_name"], "shortDescription": "", "isNSFW": False},
                     "serverVersion": "ilot-standin", "signup": {"allowed": s["signup"], "allowedForCurrentIP": s["signup"],
                     "requiresEmailVerification": False, "requiresApproval": False, "minimumAge": 16},
                     "transcoding": {"enabled": s["transcoding"]}, "live": {"enabled": s["live"]},
                     "email": {"enabled": bool(self.cfg["smtp"]["host"])}}, ()

    def pt_upload(self, h):
        """Streams the body to /data/videos/N; answers its size and SHA-256."""
        os.makedirs("/data/videos", exist_ok=True)
        n = len(os.listdir("/data/videos")) + 1
        while True:
            try:
                fd = os.open(f"/data/videos/{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                break
            except FileExistsError:
                n += 1
        digest, size = hashlib.sha256(), 0
        if os.geteuid() == 0:  # PeerTube's files are its user's
            st = os.stat("/data/videos")
            os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "wb") as f:
            for part in h.chunks():
                digest.update(part)
                f.write(part)
                size += len(part)
        return 200, {"video": {"id": n}, "path": f"/data/videos/{n}", "bytes": size, "sha256": digest.hexdigest()}, ()

    # Ghost ------------------------------------------------------------------------------------

    def ghost_https(self, h, path):
        """Ghost redirects to its https url a request that did not come over https."""
        url = self.cfg["settings"]["url"]
        if url.startswith("https://") and h.headers.get("X-Forwarded-Proto", "http") != "https":
            raise Reply(301, b"Moved Permanently\n", [("Location", url.rstrip("/") + h.path)])
        if h.command in ("POST", "PUT", "DELETE") and path.startswith("/ghost/api/admin/") and not h.headers.get("Origin"):
            raise Reply(403, {"errors": [{"message": "Request made from incorrect origin.", "type": "NoPermissionError"}]})

    def ghost_owner(self):
        return self.db.get("_owner")

    def ghost_site(self, h):
        return 200, {"site": {"title": self.db.get("title", "Ghost"), "description": "", "logo": None, "icon": None,
                              "url": self.cfg["settings"]["url"].rstrip("/") + "/", "version": "6.61",
                              "setup": self.ghost_owner() is not None}}, ()

    def ghost_setup_state(self, h):
        return 200, {"setup": [{"status": self.ghost_owner() is not None}]}, ()

    def ghost_setup(self, h):
        body = h.json_body()
        if self.ghost_owner() is not None:
            raise Reply(403, {"errors": [{"message": "Setup has already been completed.", "type": "NoPermissionError"}]})
        s = (body.get("setup") or [{}])[0]
        for field in ("name", "email", "password", "blogTitle"):
            if not isinstance(s.get(field), str) or not s[field]:
                raise Reply(422, {"errors": [{"message": f"{field} is required", "type": "ValidationError"}]})
        if len(s["password"]) < 10:
            raise Reply(422, {"errors": [{"message": "Your password must be at least 10 characters long.",
                                          "type": "ValidationError"}]})
        self.db.add_user(s["email"], s["password"])
        self.db.put("_owner", s["email"])
        self.db.put("title", s["blogTitle"])
        log(f"ghost: owner {s['email']} set up")
        return 201, {"users": [{"name": s["name"], "email": s["email"], "status": "active"}]}, ()

    def ghost_session(self, h):
        body = h.json_body()
        user, password = body.get("username", ""), body.get("password", "")
        if self.db.one("SELECT name FROM standin_users WHERE name = %s", (user,)) is None:
            raise Reply(404, {"errors": [{"message": "There is no user with that email address.", "type": "NotFoundError"}]})
        if not self.db.check_user(user, password):
            raise Reply(422, {"errors": [{"message": "Your password is incorrect.", "type": "ValidationError"}]})
        # Staff device verification (session-service.js, middleware.js): a user's first sign-in
        # is let through (api/endpoints/session.js: !user.hasLoggedIn()); later ones from a new
        # device need the code Ghost emails, unless security:staffDeviceVerification is off.
        first = self.db.get(f"_last_seen:{user}") is None
        if not first and self.cfg["settings"]["staff_device_verification"]:
            raise Reply(403, {"errors": [{"message": "User must verify session to login.",
                                          "code": "2FA_NEW_DEVICE_DETECTED", "type": "Needs2FAError"}]})
        self.db.put(f"_last_seen:{user}", datetime.datetime.now(datetime.timezone.utc).isoformat())
        token = secrets.token_hex(32)
        self.db.run(("INSERT INTO standin_sessions (token, name) VALUES (%s, %s)", (token, user)))
        cookie = f"ghost-admin-api-session={token}; Path=/ghost; HttpOnly; SameSite=Lax"
        if self.cfg["settings"]["url"].startswith("https://"):
            cookie += "; Secure"
        return 201, b"Created", [("Set-Cookie", cookie)]

    def ghost_settings(self, h):
        jar = http.cookies.SimpleCookie(h.headers.get("Cookie", ""))
        token = jar["ghost-admin-api-session"].value if "ghost-admin-api-session" in jar else ""
        if not token or self.db.one("SELECT name FROM standin_sessions WHERE token = %s", (token,)) is None:
            raise Reply(403, {"errors": [{"message": "Authorization failed", "type": "NoPermissionError"}]})
        if h.command == "PUT":
            for item in h.json_body().get("settings", []):
                if str(item.get("key", "")).startswith("_") or "key" not in item:
                    raise Reply(422, {"errors": [{"message": "bad setting", "type": "ValidationError"}]})
                self.db.put(item["key"], item.get("value", ""))
        rows = self.db.run(("SELECT k, v FROM standin_settings ORDER BY k", ()))
        return 200, {"settings": [{"key": k, "value": v} for k, v in rows if not k.startswith("_")]}, ()

    # Test endpoints ---------------------------------------------------------------------------

    def status(self, h):
        c, db = self.cfg, {"ok": False, "database": self.cfg["db"]["database"], "user": self.cfg["db"]["user"]}
        settings = dict(c["settings"])
        try:
            db["tables"] = self.db.tables()
            db["user"] = self.cfg["db"]["user"]
            if self.cfg["db"]["kind"] == "postgres":
                db["table_owners"] = sorted({r[0] for r in self.db.run(
                    ("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'", ()))})
            db["cron_runs"] = self.db.one("SELECT COUNT(*) FROM cron_runs")[0]
            db["ok"] = True
            if self.role == "ghost":
                settings["members_signup_access"] = self.db.get("members_signup_access")
                settings["title"] = self.db.get("title")
        except Exception as e:
            db["error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
        admin = c["admin"] or (self.ghost_owner() if db["ok"] else None)
        settings["smtp"] = {k: v for k, v in c["smtp"].items() if k != "password"}
        return 200, {"role": self.role, "db": db,
                     "redis": {"ok": redis_ping(c["redis"]) if c["redis"] else None},
                     "admin": {"user": admin}, "settings": settings,
                     "request": {"host": h.headers.get("Host"), "x_forwarded_for": h.headers.get("X-Forwarded-For"),
                                 "x_forwarded_proto": h.headers.get("X-Forwarded-Proto"),
                                 "x_forwarded_host": h.headers.get("X-Forwarded-Host"),
                                 "peer": h.client_address[0], "client": self.client_ip(h)}}, ()

    def login(self, h):
        body = h.json_body()
        user, password = str(body.get("user", "")), str(body.get("password", ""))
        if self.db.check_user(user, password):
            return 200, {"ok": True, "user": user}, ()
        client = self.client_ip(h)
        if self.role == "nextcloud":  # Nextcloud's JSON log line, which fail2ban-like guards read
            nc_log(h, {"reqId": secrets.token_urlsafe(15), "level": 2,
                       "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "remoteAddr": client, "user": "--", "app": "core", "method": "POST", "url": "/login",
                       "scriptName": "/index.php", "message": f"Login failed: {user} (Remote IP: {client})",
                       "userAgent": h.headers.get("User-Agent", "--"), "version": NC_VERSION})
        else:
            log(f"{self.role}: login failed for {user} from {client}")
        raise Reply(403, {"ok": False})

    def mail(self, h):
        to = str(h.json_body().get("to", ""))
        if "@" not in to:
            raise Reply(400, {"ok": False, "error": "'to' must be an address"})
        try:
            sender = send_mail(self.role, self.cfg["smtp"], to)
        except Exception as e:
            log(f"{self.role}: mail to {to} failed: {type(e).__name__}: {e}")
            raise Reply(502, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        log(f"{self.role}: mail sent to {to} from {sender}")
        return 200, {"ok": True, "from": sender, "to": to}, ()


# --- the two commands ---------------------------------------------------------------------------

def stop(signum, frame):  # TERM/INT: exit at once (also as PID 1, which ignores unhandled signals)
    log("standin-web: stopping")
    os._exit(0)


def serve():
    global APP
    role = detect_role()
    if role is None:
        sys.exit("standin-web: cannot tell which app to play: set NEXTCLOUD_ADMIN_USER (nextcloud), "
                 "PEERTUBE_WEBSERVER_HOSTNAME (peertube), or url and database__client (ghost)")
    APP = App(role)
    log(f"standin-web: playing {role}, database {APP.cfg['db']['kind']} at {APP.cfg['db']['host']}")
    APP.db = install(role, APP.cfg, APP.db)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT[role]), Handler)
    server.daemon_threads = True
    log(f"standin-web: {role} listening on 0.0.0.0:{PORT[role]}")
    server.serve_forever()


NC_CONFIG = "/var/www/html/config/ilot-standin.json"


def nc_config():
    """The stand-in's config.php: {} before the install wrote it."""
    try:
        with open(NC_CONFIG) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def pt_log(msg):
    """PeerTube's logger: the container's output and /data/logs/peertube.log (storage.logs)."""
    line = json.dumps({"level": "info", "message": msg,
                       "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    log(line)
    try:
        os.makedirs("/data/logs", exist_ok=True)
        with open("/data/logs/peertube.log", "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def reset_password(args):
    """scripts/reset-password.ts (`npm run reset-password -- -u USER`): asks "New password?",
    reads one line from its input (piped works: upstream's own test does it), checks it like
    the API does (6 to 255 characters) and saves it."""
    if len(args) != 2 or args[0] != "-u":
        sys.exit("usage: npm run reset-password -- -u USER")
    cfg = config("peertube")
    db = Db(cfg["db"])
    if db.one("SELECT name FROM standin_users WHERE name = %s", (args[1],)) is None:
        sys.exit(f"Unknown user {args[1]}.")
    print("New password?", flush=True)
    password = sys.stdin.readline().rstrip("\n")
    if not 6 <= len(password) <= 255:
        sys.exit("Invalid new password. Password should be at least 6 characters and no more than 255.")
    db.run(("UPDATE standin_users SET password_hash = %s WHERE name = %s", (hash_password(password), args[1])))
    print("User password updated.", flush=True)


def www_data_can_append(path):
    """Whether Apache's worker (www-data, uid 33) may open `path` to append: asked of the kernel
    in a child that becomes uid 33, as the real worker would (the container's output, a pipe of
    root's, is not its to open)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(33)
            os.setuid(33)
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o640))
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def nc_log(h, entry):
    """Log/File.php::write of a LogDetails JSON line. log_type file (the default): to logfile,
    else datadirectory/nextcloud.log; when the worker cannot open it, PHP's error_log(), which
    under mod_php is Apache's ErrorLog: /dev/stderr in the php:apache image, with Apache's prefix.
    log_type errorlog: error_log() always."""
    line = json.dumps(entry, separators=(",", ":"))
    get = lambda k, d=None: E.get("NC_" + k, nc_config().get(k, d))
    if get("log_type", "file") == "file":
        path = get("logfile") or os.path.join(get("datadirectory", "/var/www/html/data"), "nextcloud.log")
        if www_data_can_append(path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            if os.geteuid() == 0:
                os.fchown(fd, 33, 33)
            with os.fdopen(fd, "a") as f:
                f.write(line + "\n")
            return
    now = datetime.datetime.now()
    peer, port = h.client_address[:2]
    sys.stderr.write(f"[{now.strftime('%a %b %d %H:%M:%S.%f %Y')}] [php:notice] [pid {os.getpid()}] "
                     f"[client {peer}:{port}] {line}\n")
    sys.stderr.flush()


def nc_write_config(c):
    """Writes the stand-in's config.php (0640, www-data's like upstream's), atomically."""
    os.makedirs(os.path.dirname(NC_CONFIG), exist_ok=True)
    tmp = NC_CONFIG + ".new"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640), "w") as f:
        json.dump(c, f)
    if os.geteuid() == 0:
        st = os.stat("/var/www/html")
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chown(os.path.dirname(NC_CONFIG), st.st_uid, st.st_gid)
    os.replace(tmp, NC_CONFIG)


def occ(args):
    """Nextcloud's occ, the command ilot's manifest runs: maintenance:mode --on|--off, kept in
    the config file (config.php's 'maintenance' upstream), as the file's owner only."""
    try:
        owner = os.stat(NC_CONFIG).st_uid
    except OSError:
        sys.exit("Nextcloud is not installed - only a limited number of commands are available")
    if os.geteuid() != owner:
        sys.exit("Console has to be executed with the user that owns the file config/config.php\n"
                 f"Current user id: {os.geteuid()}\nOwner id of config.php: {owner}")
    if args not in (["maintenance:mode", "--on"], ["maintenance:mode", "--off"]):
        sys.exit(f"occ (ilot stand-in): only maintenance:mode --on|--off, not {' '.join(args)}")
    on = args[1] == "--on"
    c = nc_config()
    c["maintenance"] = on
    nc_write_config(c)
    print("Maintenance mode enabled" if on else "Maintenance mode disabled")


def cron():
    """A heartbeat in cron_runs every ILOT_STANDIN_CRON_EVERY seconds, whatever the database's state."""
    every = float(E.get("ILOT_STANDIN_CRON_EVERY") or 5)
    role, state = detect_role(), None
    while True:
        try:
            if role or not (E.get("POSTGRES_HOST") or os.path.exists(NC_CONFIG)):
                c = config(role or "nextcloud")["db"]
            else:  # Nextcloud's cron.php: config.php from the shared volume, NC_ variables first
                if not nc_config().get("db"):
                    raise RuntimeError("Nextcloud is not installed yet (no config.php)")
                c = nc_db(None)
            db = Db(c)
            db.run((db.cron_table_sql(), ()), ("INSERT INTO cron_runs (host) VALUES (%s)", (socket.gethostname(),)))
            if state != "ok":
                log(f"cron: heartbeats go to {c['database']} at {c['host']} every {every:g} s")
            state = "ok"
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).strip()[:200]}"
            if state != msg:
                log(f"cron: no heartbeat ({msg}); trying again every {every:g} s")
            state = msg
        time.sleep(every)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "serve":
        serve()
    elif command == "cron":
        cron()
    elif command == "occ":
        occ(sys.argv[2:])
    elif command == "reset-password":
        reset_password(sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} serve|cron|occ|reset-password ARGS")
