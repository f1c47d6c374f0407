"""swtpm fixtures (filled in with the TPM backend)."""
