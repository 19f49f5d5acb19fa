"""The board rkstream runs on: what ``rkstream doctor`` reports, and frequency pinning.

- ``sysfs``: a :class:`~rkstream.board.sysfs.Root` that reads ``sys/`` and
  ``proc/`` under a chosen directory (tests pass a fake tree), and finds the
  NPU, DDR and CPU frequency domains.
- ``doctor``: the set-up checks and their text and JSON reports.
- ``freq``: opt-in pinning of those domains to their highest frequency.

Nothing here loads a native library.
"""
