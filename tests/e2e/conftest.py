import pytest

from .stubproc import GDB, start_stub


@pytest.fixture
def stub_factory():
    started = []

    def start(*args):
        sp = start_stub(*args)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        sp.stop()


def need_gdb():
    if GDB is None:
        pytest.skip("gdb is not installed (setup.sh installs it)")
