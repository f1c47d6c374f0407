"""The manufacturing station: provisions factory-new boards over their serial consoles.

    link.py         one board's console (pty path, rfc2217://, socket://) driven through the
                    sans-I/O line protocol (firmware/mfg_protocol.py): timeouts, retries, counts
    provisioner.py  one board from identify to lock: key generated on the board, evidence that
                    it is resident (TPM attestation or the token's report), IDevID and IAK
                    certificates from the manufacturer CA, installation read back, the record
    records.py      the manufacturing database (SQLAlchemy Core): boards recorded once their
                    certificate is installed and read back
    export.py       what the MASA and the registrars import from that database
    rack.py         several boards at once, each in a thread of its own, with progress

The station uses `hsm` (keys, attestation, certificates) and the protocol of
`firmware`; it knows nothing of boards' insides or of the lab: it only ever
reaches a board through its console.
"""
