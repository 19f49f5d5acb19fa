"""Every logger rkstream writes to, one per concern.

rkstream never configures logging itself except in the CLI entry point.
"""

import logging

server_log = logging.getLogger("rkstream.server")
ws_log = logging.getLogger("rkstream.ws")
engine_log = logging.getLogger("rkstream.engine")
native_log = logging.getLogger("rkstream.native")
scheduler_log = logging.getLogger("rkstream.scheduler")
config_log = logging.getLogger("rkstream.config")
