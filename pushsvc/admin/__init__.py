"""The admin endpoint (``service``), the console (``cli``, ``pushsvc-admin``)
and the AMP commands between them (``wire``)."""
