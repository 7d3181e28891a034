#!/usr/bin/env python3
"""A stand-in for the Telegram Bot API (and a webhook receiver), on loopback, for the tests.

The real Bot API cannot be reached from the test machines. This server speaks the part ilot
uses, as api.telegram.org does: POST /bot<TOKEN>/sendMessage and /bot<TOKEN>/getUpdates, with
JSON bodies and {"ok": ..., "result": ...} answers, 429 with parameters.retry_after, and
error_code/description on failures. It also records webhook and ntfy POSTs.

It records ntfy POSTs (/ntfy: the text body and the Title/Priority headers) and counts
heartbeats (GET /heartbeat). It also runs a minimal SMTP server (plain, no TLS) that keeps every message it accepts, for
the email channel: GET /_log lists them under "mail".

Control endpoints for the test:
  GET  /_log            everything received: {"sent": [...], "webhook": [...], "attempts": N}
  POST /_fail           {"codes": [429, 500]}: the next sendMessage calls fail with these
  POST /_update         {"chat_id": 111, "text": "/status"}: queued for getUpdates
Prints the HTTP port and the SMTP port, then serves until killed.
"""
import json
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = sys.argv[1]
lock = threading.Lock()
state = {"sent": [], "webhook": [], "mail": [], "ntfy": [], "heartbeats": 0, "attempts": 0, "fail": [], "updates": [], "next_update": 1}


def chat(chat_id):
    return {"id": chat_id, "type": "private", "first_name": "Admin"}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {"raw": raw.decode(errors="replace")}

    def do_GET(self):
        if self.path == "/_log":
            with lock:
                self.reply(200, {k: state[k] for k in ("sent", "webhook", "mail", "ntfy", "heartbeats", "attempts")})
        elif self.path.startswith("/heartbeat"):
            with lock:
                state["heartbeats"] += 1
            self.reply(200, {})
        else:
            self.reply(404, {"ok": False, "error_code": 404, "description": "Not Found"})

    def do_POST(self):
        body = self.body()
        if self.path == "/_fail":
            with lock:
                state["fail"].extend(body["codes"])
            return self.reply(200, {})
        if self.path == "/_update":
            with lock:
                uid = state["next_update"]
                state["next_update"] += 1
                state["updates"].append({
                    "update_id": uid,
                    "message": {
                        "message_id": uid, "date": int(time.time()), "chat": chat(body["chat_id"]),
                        "from": {"id": body["chat_id"], "is_bot": False, "first_name": "Admin"},
                        "text": body["text"],
                    },
                })
            return self.reply(200, {})
        if self.path.startswith("/ntfy"):
            with lock:
                state["ntfy"].append({"body": body.get("raw", ""), "title": self.headers.get("title"),
                                      "priority": self.headers.get("priority")})
            return self.reply(200, {})
        if self.path.startswith("/webhook"):
            with lock:
                state["webhook"].append({"body": body, "authorization": self.headers.get("authorization")})
            return self.reply(200, {})
        prefix = "/bot" + TOKEN + "/"
        if not self.path.startswith(prefix):
            return self.reply(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        # Method names are case-insensitive, as on api.telegram.org.
        method = self.path[len(prefix):].lower()
        if method == "sendmessage":
            with lock:
                state["attempts"] += 1
                code = state["fail"].pop(0) if state["fail"] else None
                if code is None:
                    state["sent"].append({"chat_id": body.get("chat_id"), "text": body.get("text")})
                    n = len(state["sent"])
            if code == 429:
                return self.reply(429, {"ok": False, "error_code": 429,
                                        "description": "Too Many Requests: retry after 1",
                                        "parameters": {"retry_after": 1}})
            if code is not None:
                return self.reply(code, {"ok": False, "error_code": code, "description": "Internal Server Error"})
            return self.reply(200, {"ok": True, "result": {
                "message_id": n, "date": int(time.time()), "chat": chat(body.get("chat_id")),
                "text": body.get("text")}})
        if method == "getupdates":
            offset = body.get("offset") or 0
            deadline = time.time() + min(float(body.get("timeout") or 0), 1.0)
            while True:
                with lock:
                    state["updates"] = [u for u in state["updates"] if u["update_id"] >= offset]
                    ready = list(state["updates"])
                if ready or time.time() >= deadline:
                    return self.reply(200, {"ok": True, "result": ready})
                time.sleep(0.05)
        return self.reply(404, {"ok": False, "error_code": 404, "description": "Not Found: method"})


class Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for one client: EHLO, MAIL, RCPT, DATA, QUIT."""

    def handle(self):
        def say(line):
            self.wfile.write((line + "\r\n").encode())
            self.wfile.flush()

        say("220 stand-in ESMTP")
        mail = {"from": None, "to": [], "data": ""}
        while True:
            line = self.rfile.readline().decode(errors="replace")
            if not line:
                return
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                say("250-stand-in")
                say("250 8BITMIME")
            elif verb == "MAIL":
                mail = {"from": line.strip(), "to": [], "data": ""}
                say("250 OK")
            elif verb == "RCPT":
                mail["to"].append(line.strip())
                say("250 OK")
            elif verb == "DATA":
                say("354 go on")
                lines = []
                while True:
                    l = self.rfile.readline().decode(errors="replace")
                    if l in (".\r\n", ".\n", ""):
                        break
                    lines.append(l)
                mail["data"] = "".join(lines)
                with lock:
                    state["mail"].append(mail)
                say("250 queued")
            elif verb == "QUIT":
                say("221 bye")
                return
            else:
                say("250 OK")


smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Smtp)
threading.Thread(target=smtp.serve_forever, daemon=True).start()
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], smtp.server_address[1], flush=True)
server.serve_forever()
