"""Where the published BRSKI test vectors live: ../shared/vectors beside the checkout."""

import os
from pathlib import Path

VECTORS = Path(os.environ.get("PLEDGEFORGE_VECTORS",
                              Path(__file__).resolve().parents[1].parent / "shared" / "vectors"))
APPC = VECTORS / "rfc8995-appendixC"
