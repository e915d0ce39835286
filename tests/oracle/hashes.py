#!/usr/bin/env python3
"""Independent oracle for `ckpt-diff hash`: the file hashes of Civitai and A1111, computed
with Python's hashlib, zlib and (if installed) blake3, over the byte ranges those tools
define. Prints one JSON object per file argument."""
import hashlib
import json
import struct
import sys
import zlib

try:
    import blake3
except ImportError:  # the Rust test says so when this is missing
    blake3 = None


def hashes(path):
    data = open(path, "rb").read()
    out = {"bytes": len(data)}
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    out["a1111_legacy"] = legacy
    out["autov1"] = legacy if len(data) >= 0x200000 else None
    full = hashlib.sha256(data).hexdigest()
    out["sha256"] = full
    out["autov2"] = full[:10]
    if len(data) >= 8:
        (n,) = struct.unpack("<Q", data[:8])
        start = 8 if n >= 16 * 1024 * 1024 else min(8 + n, len(data))
        out["autov3"] = hashlib.sha256(data[start:]).hexdigest()
        out["autov3_from"] = start
    crc = zlib.crc32(data) & 0xFFFFFFFF
    out["crc32"] = struct.pack("<I", crc).hex()
    out["blake3"] = blake3.blake3(data).hexdigest() if blake3 else None
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(json.dumps(hashes(p)))
