"""The admin endpoint (``service``), the AMP commands between it and the
console (``wire``), and the console ``pushsvc-admin``: ``cli`` (its main),
``commands`` (the command table, parsing, help), ``connection`` (connect,
reconnect, endpoint errors), ``output`` (tables, ``--json``, ``--watch``) and
``prompt`` (the interactive prompt)."""
