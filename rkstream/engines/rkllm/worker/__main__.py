"""Entry point of a worker process; see :mod:`rkstream.engines.rkllm.worker.child`."""

import sys

from rkstream.engines.rkllm.worker.child import main

sys.exit(main(sys.argv[1:]))
