# Shared pytest fixtures. The test rig's fixtures (and its one hook, which starts the rig before
# the first test while the process is still single-threaded) live in tests/rig/fixtures.py.
from tests.rig.fixtures import make_guests, pytest_collection_finish, rig, rig_conn  # noqa: F401
