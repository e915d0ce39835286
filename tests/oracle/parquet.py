"""Independent check of `ckpt-diff index export --parquet`: reads the index with Python's
sqlite3 (the rows' sketches are little-endian f64 blobs) and the Parquet file with DuckDB,
and compares every record; then asks DuckDB for one inner product of two sketches, the kind
of query a hub-scale index would serve.

usage: parquet.py INDEX.sqlite EXPORT.parquet   -> one JSON line
"""

import json
import sqlite3
import struct
import sys

index, export = sys.argv[1], sys.argv[2]
try:
    import duckdb
except ImportError:
    print(json.dumps({"duckdb": False}))
    sys.exit(0)

db = sqlite3.connect(index)
want = {}
for mid, path, name, arch, scale, sha in db.execute(
    "SELECT id, path, name, arch, scale, sha256 FROM models"
):
    for row, label, comp, params, norm2, blob in db.execute(
        "SELECT row, label, component, params, norm2, sketch FROM rows WHERE model = ?", (mid,)
    ):
        sketch = list(struct.unpack("<%dd" % (len(blob) // 8), blob))
        want[(mid, row)] = (path, name, arch, scale, sha, label, comp, params, norm2, sketch)

got = {}
for r in duckdb.sql(
    f"SELECT model, row, path, name, arch, scale, sha256, label, component, params, norm2, "
    f"sketch FROM read_parquet('{export}')"
).fetchall():
    got[(r[0], r[1])] = (r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], list(r[11]))

mismatches = sum(1 for k in want if got.get(k) != want[k]) + sum(1 for k in got if k not in want)

# One delta inner product in SQL, beside the same from the blobs.
keys = sorted(want)
a, b = keys[0], keys[-1]
sql = duckdb.sql(
    f"SELECT list_dot_product(x.sketch, y.sketch) FROM read_parquet('{export}') x, "
    f"read_parquet('{export}') y WHERE x.model = {a[0]} AND x.row = {a[1]} "
    f"AND y.model = {b[0]} AND y.row = {b[1]}"
).fetchall()[0][0]
direct = sum(p * q for p, q in zip(want[a][9], want[b][9]))
print(json.dumps({"duckdb": True, "records": len(got), "want": len(want),
                  "mismatches": mismatches, "dot_sql": sql, "dot_direct": direct}))
