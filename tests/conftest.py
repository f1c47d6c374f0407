"""Shared fixtures: real SoftHSM2 and swtpm started in temp dirs on free ports.

Fixture modules live beside this file and are loaded as plugins so each
area of the project keeps its fixtures in its own file.
"""

pytest_plugins = ["fixtures_softhsm", "fixtures_swtpm", "fixtures_lab"]
