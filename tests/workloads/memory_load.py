"""Memory load for mongowatch: many connections that stay open, idle or half-way through a reply.

    memory_load.py server PORT MODE           MODE: idle (a small reply to every request) or
                                              half (the first half of a 16 MB OP_MSG reply to
                                              the first request, then nothing)
    memory_load.py client PORT N MODE READY   once READY.start exists, opens N connections,
                                              sends one request on each, reads its small reply
                                              (idle) or the half reply (half), touches READY
                                              and holds them open

Plain Python, no driver: the wire messages are built by hand. Watch the client's pid with
mongowatch and read the daemon's VmRSS/VmHWM from /proc once READY exists.
"""
import os
import resource
import socket
import struct
import sys
import threading
import time

OP_MSG = 2013
REPLY_LEN = 16 * 1024 * 1024


def bson_doc(elements):
    body = b"".join(elements) + b"\x00"
    return struct.pack("<i", len(body) + 4) + body


def e_str(name, value):
    v = value.encode()
    return b"\x02" + name.encode() + b"\x00" + struct.pack("<i", len(v) + 1) + v + b"\x00"


def e_double(name, value):
    return b"\x01" + name.encode() + b"\x00" + struct.pack("<d", value)


def op_msg(request_id, response_to, doc):
    body = struct.pack("<I", 0) + b"\x00" + doc
    return struct.pack("<iiii", 16 + len(body), request_id, response_to, OP_MSG) + body


def big_reply(response_to):
    """An OP_MSG reply of exactly REPLY_LEN bytes."""
    fixed = len(op_msg(0, 0, bson_doc([e_double("ok", 1.0), e_str("pad", "")])))
    pad = "x" * (REPLY_LEN - fixed)
    msg = op_msg(2, response_to, bson_doc([e_double("ok", 1.0), e_str("pad", pad)]))
    assert len(msg) == REPLY_LEN
    return msg


def raise_fd_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def read_message(sock):
    header = read_exact(sock, 16)
    (length,) = struct.unpack("<i", header[:4])
    return header + read_exact(sock, length - 16)


def serve(conn, mode, half):
    try:
        while True:
            req = read_message(conn)
            (request_id,) = struct.unpack("<i", req[4:8])
            if mode == "idle":
                conn.sendall(op_msg(1, request_id, bson_doc([e_double("ok", 1.0)])))
            else:
                # The reply's first half (its responseTo patched in), then a stall.
                conn.sendall(half[:8] + struct.pack("<i", request_id) + half[12:])
                while conn.recv(1 << 16):
                    pass
                return
    except (EOFError, OSError):
        pass


def server(port, mode):
    raise_fd_limit()
    threading.stack_size(256 * 1024)
    half = big_reply(0)[: REPLY_LEN // 2] if mode == "half" else b""
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, mode, half), daemon=True).start()


def client(port, n, mode, ready):
    raise_fd_limit()
    while not os.path.exists(ready + ".start"):
        time.sleep(0.01)
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        doc = bson_doc([e_str("find", "c"), e_str("$db", "memory")])
        s.sendall(op_msg(i + 1, 0, doc))
        if mode == "idle":
            read_message(s)
        else:
            read_exact(s, REPLY_LEN // 2)
            # Paces the capture: 8 MB per connection through the ring buffer.
            time.sleep(0.005)
        socks.append(s)
    open(ready, "w").close()
    while True:
        time.sleep(3600)


def main():
    role = sys.argv[1]
    if role == "server":
        server(int(sys.argv[2]), sys.argv[3])
    elif role == "client":
        client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
