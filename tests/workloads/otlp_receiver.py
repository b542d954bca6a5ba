#!/usr/bin/env python3
"""A real OTLP logs receiver for the export tests (tests/tests/export.rs).

gRPC: the official ``LogsServiceServicer`` of PyPI's opentelemetry-proto, served by grpcio.
http/protobuf: an ``http.server`` taking POST /v1/logs and decoding ``ExportLogsServiceRequest``
with the same generated messages (a body that does not decode is answered 400, as a
collector does).

Every LogRecord received is written to --out as one JSON line (flushed at once):
{"resource": {...}, "scope": name, "time_unix_nano", "observed_time_unix_nano",
"severity_number", "severity_text", "event_name", "attributes": {...}, "body": ...}, AnyValues
turned into plain JSON (a kvlist into an object, keys in order). --ready-file is touched once
the port listens.
"""

import argparse
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

LOCK = threading.Lock()
OUT = None


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def record(request):
    lines = []
    for rl in request.resource_logs:
        resource = attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                lines.append(json.dumps({
                    "resource": resource,
                    "scope": sl.scope.name,
                    "time_unix_nano": lr.time_unix_nano,
                    "observed_time_unix_nano": lr.observed_time_unix_nano,
                    "severity_number": lr.severity_number,
                    "severity_text": lr.severity_text,
                    "event_name": lr.event_name,
                    "attributes": attrs(lr.attributes),
                    "body": any_value(lr.body),
                }))
    with LOCK:
        for line in lines:
            OUT.write(line + "\n")
        OUT.flush()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        record(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/logs":
            return self.reply(404, b"")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.reply(415, b"")
        try:
            request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        except DecodeError:
            return self.reply(400, b"")
        record(request)
        self.reply(200, logs_service_pb2.ExportLogsServiceResponse().SerializeToString())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ready-file", required=True)
    args = p.parse_args()
    OUT = open(args.out, "a", encoding="utf-8")
    if args.protocol == "grpc":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
        if server.add_insecure_port("127.0.0.1:%d" % args.port) == 0:
            sys.exit("cannot listen on port %d" % args.port)
        server.start()
        open(args.ready_file, "w").close()
        server.wait_for_termination()
    else:
        httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Http)
        open(args.ready_file, "w").close()
        httpd.serve_forever()


if __name__ == "__main__":
    main()
