"""A local BRSKI lab: keys in SoftHSM, a MASA, a cloud registrar and an owner registrar.

`Lab` (lab.py) is what the CLI, the demo, the bench and the tests use; see
its module for the directory layout and the trust the lab sets up.
"""

from .lab import Lab, LabError, ProvisionedPledge, UpReport, server_alive, stop_process

__all__ = ["Lab", "LabError", "ProvisionedPledge", "UpReport", "server_alive", "stop_process"]
