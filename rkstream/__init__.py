"""rkstream: stream RKLLM tokens over WebSockets from an RK3588 board."""

__version__ = "0.1.0"
