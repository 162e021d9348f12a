# The second tier: the real CLI on libvirt's built-in test driver (see tests/testdriver.py).
from tests.testdriver import hv  # noqa: F401
