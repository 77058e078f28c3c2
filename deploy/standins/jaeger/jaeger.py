"""An OTLP/HTTP (JSON) trace sink with a slice of Jaeger's query API, where Jaeger cannot be pulled.

POST /v1/traces on :4318 takes OTLP JSON and keeps, per trace ID, the services of its spans.
On :16686, GET /api/services answers {"data": [service, ...]} and GET /api/traces?service=S
answers {"data": [{"traceID", "services": [...], "spans": N}]} for the traces S took part in.
"""
import json
import signal
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

traces = defaultdict(lambda: {"services": set(), "spans": 0})
lock = threading.Lock()


def service_name(resource):
    for attr in resource.get("attributes", []):
        if attr.get("key") == "service.name":
            return attr.get("value", {}).get("stringValue", "")
    return ""


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if urlsplit(self.path).path != "/v1/traces":
            self.reply(404, {"error": "not found"})
            return
        try:
            doc = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        except ValueError:
            self.reply(400, {"error": "body is not JSON"})
            return
        with lock:
            for rs in doc.get("resourceSpans", []):
                name = service_name(rs.get("resource", {}))
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        trace = traces[span.get("traceId", "")]
                        trace["services"].add(name)
                        trace["spans"] += 1
        self.reply(200, {})

    def do_GET(self):
        url = urlsplit(self.path)
        with lock:
            if url.path == "/api/services":
                names = sorted({s for t in traces.values() for s in t["services"]})
                self.reply(200, {"data": names})
            elif url.path == "/api/traces":
                wanted = parse_qs(url.query).get("service", [""])[0]
                data = [{"traceID": tid, "services": sorted(t["services"]), "spans": t["spans"]}
                        for tid, t in traces.items() if wanted in t["services"]]
                self.reply(200, {"data": data})
            else:
                self.reply(404, {"error": "not found"})

    def log_message(self, *args):
        pass


def main():
    servers = [ThreadingHTTPServer(("0.0.0.0", port), Handler) for port in (4318, 16686)]
    threads = [threading.Thread(target=s.serve_forever) for s in servers]
    for t in threads:
        t.start()

    def stop(*_):
        for s in servers:
            threading.Thread(target=s.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("jaeger stand-in: OTLP/HTTP on :4318, query API on :16686", flush=True)
    for t in threads:
        t.join()
    sys.exit(0)


if __name__ == "__main__":
    main()
