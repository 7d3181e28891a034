#!/usr/bin/env python3
"""A test smarthost: the ISP relay that a family's mail goes through when port 25 is blocked.

It speaks enough ESMTP for Postfix as a client: EHLO, STARTTLS (with the certificate and key
given), AUTH PLAIN and AUTH LOGIN (only after STARTTLS, and only with the expected user and
password), MAIL, RCPT, DATA, RSET, NOOP, QUIT. Every accepted message is written to OUTDIR as
N.eml, with N.json beside it (the envelope and the user that authenticated).

usage: smarthost.py ADDRESS USER PASSWORD CERT KEY OUTDIR
Prints the port it listens on, then serves until killed.
"""
import base64
import json
import os
import socket
import socketserver
import ssl
import sys
import threading

ADDRESS, USER, PASSWORD, CERT, KEY, OUTDIR = sys.argv[1:7]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
lock = threading.Lock()
count = [0]


class Session(socketserver.StreamRequestHandler):
    def send(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def readline(self):
        line = self.rfile.readline(65536)
        if not line:
            raise ConnectionError("client left")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def starttls(self):
        self.send("220 2.0.0 ready to start TLS")
        self.connection = context.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb")
        self.wfile = self.connection.makefile("wb")
        self.tls = True

    def check(self, user, password):
        if user == USER and password == PASSWORD:
            self.user = user
            self.send("235 2.7.0 authenticated")
        else:
            self.send("535 5.7.8 bad credentials")

    def handle(self):
        self.tls, self.user, mail_from, rcpts = False, None, None, []
        self.send("220 smarthost.test ESMTP")
        try:
            while True:
                line = self.readline()
                verb = line.split(" ", 1)[0].upper()
                arg = line[len(verb):].strip()
                if verb in ("EHLO", "HELO"):
                    caps = ["smarthost.test"]
                    caps += ["AUTH PLAIN LOGIN"] if self.tls else ["STARTTLS"]
                    caps += ["8BITMIME"]
                    for c in caps[:-1]:
                        self.send("250-" + c)
                    self.send("250 " + caps[-1])
                elif verb == "STARTTLS" and not self.tls:
                    self.starttls()
                elif verb == "AUTH" and self.tls:
                    parts = arg.split()
                    if parts[0].upper() == "PLAIN":
                        blob = parts[1] if len(parts) > 1 else (self.send("334 ") or self.readline())
                        _, user, password = base64.b64decode(blob).decode().split("\0")
                        self.check(user, password)
                    elif parts[0].upper() == "LOGIN":
                        self.send("334 VXNlcm5hbWU6")
                        user = base64.b64decode(self.readline()).decode()
                        self.send("334 UGFzc3dvcmQ6")
                        self.check(user, base64.b64decode(self.readline()).decode())
                    else:
                        self.send("504 5.5.4 mechanism not supported")
                elif verb == "MAIL":
                    if not self.user:
                        self.send("530 5.7.0 authentication required")
                        continue
                    mail_from, rcpts = arg, []
                    self.send("250 2.1.0 ok")
                elif verb == "RCPT":
                    rcpts.append(arg)
                    self.send("250 2.1.5 ok")
                elif verb == "DATA":
                    if not rcpts:
                        self.send("503 5.5.1 no recipients")
                        continue
                    self.send("354 go ahead")
                    body = []
                    while True:
                        raw = self.rfile.readline(1 << 20)
                        if not raw:
                            raise ConnectionError("client left in DATA")
                        if raw in (b".\r\n", b".\n"):
                            break
                        body.append(raw[1:] if raw.startswith(b"..") else raw)
                    with lock:
                        count[0] += 1
                        n = count[0]
                    base = os.path.join(OUTDIR, str(n))
                    with open(base + ".eml.part", "wb") as f:
                        f.write(b"".join(body))
                    os.rename(base + ".eml.part", base + ".eml")
                    with open(base + ".json", "w") as f:
                        json.dump({"from": mail_from, "to": rcpts, "user": self.user, "tls": self.tls}, f)
                    self.send("250 2.0.0 queued as %d" % n)
                    mail_from, rcpts = None, []
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    self.send("250 2.0.0 ok")
                elif verb == "NOOP":
                    self.send("250 2.0.0 ok")
                elif verb == "QUIT":
                    self.send("221 2.0.0 bye")
                    return
                else:
                    self.send("502 5.5.2 command not recognised")
        except (ConnectionError, ssl.SSLError, OSError, ValueError):
            return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server((ADDRESS, 0), Session)
print(server.server_address[1], flush=True)
server.serve_forever()
