"""The aiohttp server: the WebSocket and HTTP handlers, startup and shutdown."""
