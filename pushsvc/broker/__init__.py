"""Brokers carry messages and commands between the processes that hold sessions.

``interface.IBroker`` is the contract; ``local.LocalBroker`` serves one
process.  The worker pool's AMP hub and Redis serve the same interface, so the
session engine never knows which one it talks to.
"""
