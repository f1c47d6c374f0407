"""A local BRSKI lab: keys in SoftHSM, a MASA, a cloud registrar and an owner registrar.

`Lab` (lab.py) is what the CLI, the demo, the bench and the tests use; lab.py
lists the module of each job, layout.py the directory's layout, pki.py the
trust the lab sets up.
"""

from .lab import KeyHome, Lab, LabError, ProvisionedPledge, UpReport, server_alive, stop_process

__all__ = ["Lab", "LabError", "KeyHome", "ProvisionedPledge", "UpReport", "server_alive", "stop_process"]
