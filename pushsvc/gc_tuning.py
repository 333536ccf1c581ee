"""The garbage collector's settings for a serving process.

CPython's cyclic collector runs a young collection every 700 container
allocations and walks every tracked object that survived before it at each
older one.  A connect storm allocates a few dozen containers per connection,
so by default the collector ran about once every 20 handshakes and cost a
tenth of a connect's CPU (docs/benchmark.md).  pushsvc makes few reference
cycles (the collector finds little), so a serving process:

- collects the young generation every ``YOUNG`` allocations instead of 700;
- freezes what start-up made (modules, classes, settings): those objects
  live as long as the process and are never walked again.
"""

from __future__ import annotations

import gc

YOUNG = 7000  # allocations between young collections (CPython's default: 700)


def tune(reactor) -> None:
    """Collect less often from now on, and freeze what exists once the
    reactor has started (when start-up has made what lives for good)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
    reactor.addSystemEventTrigger("after", "startup", gc.freeze)
