"""LocalStack's own entry point (``python -m localstack.runtime.main``) with one fix for host mode.

Run by ``localstack/host.py`` with the Python of the LocalStack venv, never imported by
updraft. The fix: LocalStack 2026.3.0's hypercorn gateway stops its asyncio loop with
``loop.stop()`` from its shutdown thread. asyncio only lets the loop's own thread call
that; from another thread it sets a flag the loop reads when it next wakes, and an idle
loop blocked in ``select()`` never wakes. Measured here: about one SIGTERM in three left
the process hanging forever after "[shutdown] Stopping all services". Scheduling the
same ``stop`` with ``call_soon_threadsafe`` wakes the loop, and every one of the stops
we timed then took about a second.
"""

import runpy

from localstack.runtime.server import hypercorn as _hypercorn_server

_shutdown = _hypercorn_server.HypercornRuntimeServer.shutdown


def _shutdown_and_wake(self) -> None:
    _shutdown(self)
    try:
        self.loop.call_soon_threadsafe(self.loop.stop)
    except RuntimeError:  # the loop is already closed: nothing left to wake
        pass


_hypercorn_server.HypercornRuntimeServer.shutdown = _shutdown_and_wake

runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
