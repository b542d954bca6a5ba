#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the recorded fixtures (tests/fixtures/*.mwrec).

frame_decode: each connection's byte stream per direction (first 8 KiB), behind two
chunking-seed bytes. decompress: each OP_COMPRESSED body as [compressorId, uncompressedSize
(4 bytes LE), compressed bytes].
"""

import glob
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
REC = struct.Struct("<BBHQI")


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
    print(len(os.listdir(fd)), "frame_decode seeds,", len(os.listdir(dc)), "decompress seeds")


main()
