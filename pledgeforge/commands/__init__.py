"""CLI command groups. Each module defines one click command or group."""


def COMMAND_GROUPS():
    """Every top-level command, imported lazily to keep start-up cheap."""
    from . import keys

    return [keys.keys]
