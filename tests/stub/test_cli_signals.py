"""SIGINT/SIGTERM in the stub's terminal end it cleanly, whatever the main thread was
doing when the signal came: its handler runs between two bytecodes of the main thread,
which may hold the runtime's lock at that moment."""

from __future__ import annotations

import signal

import pytest

from stub import cli

WAIT = 10.0


class FakeRuntime:
    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.why = None

    def shutdown(self, why: str = "shut down") -> None:
        with self.lock:
            self.why = why
        self.finished.set()


@pytest.fixture
def restore_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_main_thread_holds_the_lock_still_shuts_down(sig,
                                                                        restore_handlers):
    rt = FakeRuntime()
    cli._stop_on_sigint(rt)
    with rt.lock:  # as inside the server's work when the signal lands
        signal.getsignal(sig)(sig, None)  # must return, not wait for the lock
        assert not rt.finished.is_set()
    assert rt.finished.wait(WAIT) and rt.why == "interrupted"
