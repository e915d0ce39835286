"""The hashes `ckpt-diff hash` prints, computed the way a Python tool does: hashlib, zlib
and the blake3 package over one streamed read of the file (16 MiB at a time), one after
another in one thread. Prints them as JSON.

    python hash_py.py FILE
"""

import hashlib
import json
import struct
import sys
import zlib

import blake3


def main():
    path = sys.argv[1]
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    v3_from = 8 if n >= 16 << 20 else 8 + n
    full, v3, b3, crc = hashlib.sha256(), hashlib.sha256(), blake3.blake3(), 0
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    pos = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            chunk = view[:k]
            full.update(chunk)
            b3.update(chunk)
            crc = zlib.crc32(chunk, crc)
            if pos + k > v3_from:
                v3.update(chunk[max(0, v3_from - pos):])
            pos += k
    sha = full.hexdigest()
    print(json.dumps({
        "a1111_legacy": legacy,
        "sha256": sha,
        "autov2": sha[:10],
        "autov3": v3.hexdigest(),
        "blake3": b3.hexdigest(),
        "crc32": struct.pack("<I", crc & 0xFFFFFFFF).hex(),
    }))


if __name__ == "__main__":
    main()
