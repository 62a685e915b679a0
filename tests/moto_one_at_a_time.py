"""``python -P tests/moto_one_at_a_time.py -H HOST -p PORT``: moto's server, one request at a time.

moto's backends are plain dicts behind a threaded server: a ListSecrets that
walks ``secrets.values()`` while another thread's CreateSecret adds to it fails
with "dictionary changed size during iteration", which moto answers as HTTP 500.
AWS does not fail a listing because a secret was created meanwhile, so the fake
must not either: every request runs under one lock (moto is Python under the
GIL, so little is lost). Run as a script with ``-P`` (not from tests/, where
``moto`` is our own tests/moto.py); it imports nothing of ours.
"""

import threading

import moto.server


class OneAtATime(moto.server.DomainDispatcherApplication):
    _lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:  # the whole body is built inside the lock
            return list(super().__call__(environ, start_response))


moto.server.DomainDispatcherApplication = OneAtATime
moto.server.main()
