"""CLI command groups. Each module defines one click command or group."""


def COMMAND_GROUPS():
    """Every top-level command, imported lazily to keep start-up cheap."""
    from . import ca, cert, cms, keys

    return [keys.keys, ca.ca, ca.csr, cms.cms, cert.cert]
