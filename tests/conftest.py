"""Shared fixtures: real SoftHSM2 and swtpm started in temp dirs on free ports.

Fixture modules live beside this file and are loaded as plugins so each
area of the project keeps its fixtures in its own file.
"""

pytest_plugins = ["fixtures_softhsm", "fixtures_swtpm", "fixtures_lab"]


def pytest_collection_modifyitems(items):
    """Slow tests first: `make test` runs the suite on several workers a file at a time,
    and a long file started last would leave the other workers idle at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
