"""An SMTP catcher with mailpit's message-list API, for machines where mailpit cannot be pulled.

SMTP on :1025 accepts every message and keeps it in memory; GET /api/v1/messages on :8025
answers {"total": N, "messages": [{"MessageID", "Subject", "To"}]}, newest first, as mailpit does.
"""
import email
import email.policy
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

messages = []
lock = threading.Lock()


class Catcher:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        entry = {
            "MessageID": (msg.get("Message-ID") or "").strip("<>"),
            "Subject": msg.get("Subject") or "",
            "To": [{"Address": rcpt} for rcpt in envelope.rcpt_tos],
        }
        with lock:
            messages.insert(0, entry)
        print(f"mailpit stand-in: received {entry['MessageID']} for {envelope.rcpt_tos}", flush=True)
        return "250 Message accepted"


class Api(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] not in ("/api/v1/messages", "/readyz"):
            self.send_error(404)
            return
        with lock:
            body = json.dumps({"total": len(messages), "messages": list(messages)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    smtp = Controller(Catcher(), hostname="0.0.0.0", port=1025)
    smtp.start()
    http = ThreadingHTTPServer(("0.0.0.0", 8025), Api)

    def stop(*_):
        smtp.stop()
        threading.Thread(target=http.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("mailpit stand-in: SMTP on :1025, API on :8025", flush=True)
    http.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
