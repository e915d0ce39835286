"""The L2 map of a family from Python (docs/python.md): per block, how far each model moved
from the base, and the models placed on a plane by their distances.

    python docs/examples/l2_map.py demo/sd1 l2-map.png

The folder holds a family.json (`ckpt-diff synth family` writes one; the demo's demo/sd1 has
it) listing the base first, then the models.
"""

import json
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

import ckpt_diff

family = Path(sys.argv[1] if len(sys.argv) > 1 else "demo/sd1")
out = sys.argv[2] if len(sys.argv) > 2 else "l2-map.png"
members = [m["file"] for m in json.loads((family / "family.json").read_text())["members"]]
base, models = family / members[0], [family / m for m in members[1:]]

r = ckpt_diff.l2(base, models, progress=lambda what, done, total: None)
names = r["models"][1:]  # r["models"][0] is the base
rows = [row["label"] for row in r["rows"]]

fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
# Per block: how far each model moved from the base (relative L2, models x rows).
im = left.imshow(r["relative"], aspect="auto", cmap="magma")
left.set_yticks(range(len(names)), names)
left.set_xticks(range(len(rows)), rows, rotation=90, fontsize=7)
left.set_title("‖model − base‖ / ‖base‖ per block")
fig.colorbar(im, ax=left)
# The models placed on a map: classical MDS of the pairwise distances (base included).
scope = r["scopes"][0]
xy = scope["mds"]["coords"]
right.scatter(xy[:, 0], xy[:, 1])
for (x, y), name in zip(xy, r["models"]):
    right.annotate(name, (x, y))
right.set_title(f"map of the {scope['name']} (MDS of the L2 distances)")
fig.tight_layout()
fig.savefig(out, dpi=80)
print(f"{out}: {len(names)} models, {len(rows)} rows")
