"""What crosses between processes, below every layer that uses it: the value
types (``values``), the message records and their batches (``records``), the
AMP arguments of any size (``amp_args``), and the AMP commands between a
worker and the hub, one module per direction (``hub_commands``: worker to
master; ``worker_commands``: master to worker)."""
