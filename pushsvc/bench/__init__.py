"""``pushsvc-bench``: a load tool for pushsvc that talks only the public protocol.

It starts the server as a child process (or uses one already running), opens
its WebSocket clients from a few generator processes with raw non-blocking
sockets, pushes through ``POST /api/push`` and prints a table of what it
measured next to the project's targets.  See docs/benchmark.md.

- ``wire``       the bytes: WebSocket handshake and frames, the pushed data's
                 layout, HTTP requests and a response reader (no I/O)
- ``stats``      percentiles and the process figures read from /proc
- ``loadgen``    a generator process: thousands of clients on one epoll
- ``publisher``  a pipelining keep-alive HTTP client for ``/api/push``
- ``server``     the server child: temporary config, start, health, stop
- ``workloads``  the coordinator: connect, broadcast, fixed rate, unicast
- ``report``     targets and the final table
- ``profile``    py-spy attached to the server, and a summary of its samples
- ``cli``        ``pushsvc-bench``
"""
