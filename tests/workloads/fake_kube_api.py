"""A stand-in for the Kubernetes API server, for mongowatch's pod metadata tests.

    fake_kube_api.py DIR NODE TOKEN

Serves, over TLS (DIR/server.crt, DIR/server.key) on a free port of 127.0.0.1 written to
DIR/port, what mongowatch asks of the real one:
- GET /api/v1/pods?fieldSelector=spec.nodeName=NODE: a PodList of the pods in DIR/pods/*.json
  (in name order), resourceVersion "100";
- the same with watch=1&resourceVersion=RV: a chunked stream of watch events, one JSON object
  per line, from DIR/events/*.json in name order as they appear (each file one event,
  {"type": "ADDED", "object": {...}}), until timeoutSeconds.
Requests without `Authorization: Bearer TOKEN` get 401, without the node's field selector 400,
as the real server would refuse them (403 for a wrong node is not modelled).
"""

import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

DIR, NODE, TOKEN = sys.argv[1], sys.argv[2], sys.argv[3]


def files(sub):
    d = os.path.join(DIR, sub)
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".json")]


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("fake-api: " + fmt % args + "\n")

    def refuse(self, code, reason):
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": reason, "code": code}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.refuse(401, "Unauthorized")
        if url.path != "/api/v1/pods" or q.get("fieldSelector") != ["spec.nodeName=" + NODE]:
            return self.refuse(400, "BadRequest")
        if q.get("watch") != ["1"]:
            items = [json.load(open(f)) for f in files("pods")]
            body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                               "metadata": {"resourceVersion": "100"},
                               "items": items}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        deadline = time.time() + float(q.get("timeoutSeconds", ["300"])[0])
        sent = set()
        while time.time() < deadline:
            for f in files("events"):
                if f in sent:
                    continue
                sent.add(f)
                line = json.dumps(json.load(open(f))).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            time.sleep(0.05)
        self.wfile.write(b"0\r\n\r\n")


server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
server.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(DIR, "server.crt"), os.path.join(DIR, "server.key"))
server.socket = ctx.wrap_socket(server.socket, server_side=True)
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
