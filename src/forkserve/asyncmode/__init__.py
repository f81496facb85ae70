"""Async mode: worker processes that each run an event loop (``--mode async``).

The supervisor's side is ``asyncmode.pool`` (prefork's pool, reused: spawn with
back-off, replacement, the status datagrams); the worker process is
``asyncmode.worker`` and, once forked, ``asyncmode.eventloop``; what runs for one
connection is ``asyncmode.service``; inetd's built-ins as coroutines are
``asyncmode.builtins``.
"""
