# Shared pytest fixtures. The test rig's fixtures live in tests/rig/fixtures.py.
from tests.rig.fixtures import make_guests, rig, rig_conn  # noqa: F401
