"""CLI command groups. Each module defines one click command or group."""


def COMMAND_GROUPS():
    """Every top-level command, imported lazily to keep start-up cheap."""
    from . import ca, cert, cms, keys
    from . import image
    from . import board
    from . import verify
    from . import lab, masa, pledge, registrar
    from . import provision
    from . import demo
    from . import signer

    return [board.board, image.image, keys.keys, ca.ca, ca.csr, cms.cms, cert.cert, verify.verify,
            lab.lab, masa.masa, registrar.registrar, pledge.pledge, provision.provision,
            demo.demo, signer.signer]
