"""Where the published BRSKI test vectors live: ../shared/vectors beside the checkout.

PLEDGEFORGE_VECTORS overrides; /work/shared/vectors is the workspace's copy
for clones made elsewhere.
"""

import os
from pathlib import Path

_CANDIDATES = [os.environ.get("PLEDGEFORGE_VECTORS"),
               Path(__file__).resolve().parents[1].parent / "shared" / "vectors",
               "/work/shared/vectors"]
VECTORS = next((Path(c) for c in _CANDIDATES if c and Path(c, "README.md").exists()),
               Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
APPC = VECTORS / "rfc8995-appendixC"
