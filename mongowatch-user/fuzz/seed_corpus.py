#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the recorded fixtures (tests/fixtures/*.mwrec).

frame_decode: each connection's byte stream per direction (first 8 KiB), behind two
chunking-seed bytes. decompress: each OP_COMPRESSED body as [compressorId, uncompressedSize
(4 bytes LE), compressed bytes].
ops_records: each connection's paired requests and replies as round trips whose messages are
whole frames for the decoder (the target's "frame" message choice), 10 exchanges a seed.
kernel_events: each recording as ring buffer records (a ConnOpen per connection, Data events
with their stream offsets, ConnClose), in the target's step format, about 6 KiB a seed.
"""

import glob
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
REC = struct.Struct("<BBHQI")
# mongowatch-common's EventHeader: ts, conn_id, offset, tgid, tid, fd, orig_len, captured_len,
# syscall, kind, direction, 6 bytes of padding (56 bytes).
EVENT = struct.Struct("<QQQIIiIIiBB6x")
# ConnInfo: family, local port, remote port, pad, local addr, remote addr, unix path,
# unix path length, path is local, comm (172 bytes).
CONN_INFO = struct.Struct("<HHHH16s16s108sII16s")
# The ops_records target's opcode choices for a whole frame, in its order.
FRAME_OPS = [2013, 2004, 1, 2005, 2007, 2002, 2001, 2006, 2012]


def chunks(path):
    b = open(path, "rb").read()
    p = 7
    while p < len(b):
        kind, d, conn, ts, n = REC.unpack_from(b, p)
        p += REC.size
        yield kind, d, conn, ts, b[p : p + n]
        p += n


def streams(path):
    b = open(path, "rb").read()
    p = 7
    out = {}
    while p < len(b):
        kind, d, conn, _ts, n = REC.unpack_from(b, p)
        p += REC.size
        if kind == 0:
            out.setdefault((conn, d), bytearray()).extend(b[p : p + n])
        p += n
    return out


def messages(stream):
    p = 0
    while p + 16 <= len(stream):
        n = struct.unpack_from("<i", stream, p)[0]
        if n < 16 or p + n > len(stream):
            break
        yield bytes(stream[p : p + n])
        p += n


def frame_step(m):
    """One message of ops_records as a whole frame: choice 2, opcode, length, body."""
    op = struct.unpack_from("<i", m, 12)[0]
    body = m[16:]
    if op not in FRAME_OPS or len(body) >= 4096:
        return None
    return bytes([2, FRAME_OPS.index(op)]) + struct.pack("<H", len(body)) + body


def ops_seeds(path):
    """Round trips of each connection, paired by responseTo, as ops_records inputs."""
    steps = []
    for (conn, d), s in sorted(streams(path).items()):
        if d != 0:
            continue
        requests = {struct.unpack_from("<i", m, 4)[0]: m for m in messages(s)}
        for rep in messages(streams(path).get((conn, 1), b"")):
            req = requests.get(struct.unpack_from("<i", rep, 8)[0])
            a, b = req and frame_step(req), frame_step(rep)
            if a and b:
                # connection, time step, round trip time, kind 0 (round trip), the two
                # messages, no exhaust index.
                steps.append(bytes([conn % 4, 1, 4, 0]) + a + b + bytes([1]))
    for i in range(0, len(steps), 10):
        # config: max_open 8, heartbeats kept; timeout, delay, base time.
        yield bytes([0x87, 100, 2, 0, 0]) + b"".join(steps[i : i + 10])


def event(kind, d, conn, ts, offset=0, payload=b"", orig=None):
    n = len(payload)
    h = EVENT.pack(ts, conn, offset, 0, 0, 3 + conn, n if orig is None else orig, n, -1, kind, d)
    return h + payload


def kernel_seeds(path):
    """The recording as kernel_events steps: control 0, u16 length, record."""
    out, opened, offsets = bytearray(), set(), {}
    infos = {}

    def step(rec):
        out.extend(b"\0" + struct.pack("<H", len(rec)) + rec)

    for kind, d, conn, ts, data in chunks(path):
        if conn not in opened:
            # Every seed opens the connections it uses (a seed starts where the last ended).
            opened.add(conn)
            infos[conn] = CONN_INFO.pack(2, 50000 + conn, 27017, 0, bytes([127, 0, 0, 1]),
                                         bytes([127, 0, 0, 1]), b"", 0, 0, b"python3")
            step(event(3, 0, conn, ts, payload=infos[conn]))
        if kind == 1:
            step(event(4, 0, conn, ts))
            continue
        for p in range(0, len(data), 4000):
            piece = data[p : p + 4000]
            off = offsets.get((conn, d), 0)
            step(event(1, d, conn, ts, off, piece))
            offsets[(conn, d)] = off + len(piece)
        if len(out) > 6 * 1024:
            yield bytes(out) + b"\xc5"
            out.clear()
            opened.clear()
            offsets.clear()
    if out:
        yield bytes(out) + b"\xc5"


def main():
    fd = os.path.join(HERE, "corpus", "frame_decode")
    dc = os.path.join(HERE, "corpus", "decompress")
    os.makedirs(fd, exist_ok=True)
    os.makedirs(dc, exist_ok=True)
    k = 0
    for f in sorted(glob.glob(os.path.join(FIX, "*.mwrec"))):
        name = os.path.basename(f).split(".")[0]
        for (conn, d), s in streams(f).items():
            open(os.path.join(fd, f"{name}-{conn}-{d}"), "wb").write(bytes([conn, d]) + bytes(s[:8192]))
            for m in messages(s):
                if struct.unpack_from("<i", m, 12)[0] == 2012 and len(m) > 25:
                    size = m[20:24]
                    open(os.path.join(dc, f"{name}-{k}"), "wb").write(bytes([m[24]]) + size + m[25:])
                    k += 1
    ops = os.path.join(HERE, "corpus", "ops_records")
    ke = os.path.join(HERE, "corpus", "kernel_events")
    os.makedirs(ops, exist_ok=True)
    os.makedirs(ke, exist_ok=True)
    for f in sorted(glob.glob(os.path.join(FIX, "*.mwrec"))):
        name = os.path.basename(f).split(".")[0]
        for i, seed in enumerate(ops_seeds(f)):
            open(os.path.join(ops, f"{name}-{i}"), "wb").write(seed)
        for i, seed in enumerate(kernel_seeds(f)):
            open(os.path.join(ke, f"{name}-{i}"), "wb").write(seed)
    print(len(os.listdir(fd)), "frame_decode seeds,", len(os.listdir(dc)), "decompress seeds,",
          len(os.listdir(ops)), "ops_records seeds,", len(os.listdir(ke)), "kernel_events seeds")


main()
