"""Protocol v1: events, validation and encoding, with no socket code.

The WebSocket handler decodes a message with :mod:`.codec`, validates it with
:func:`.parse.parse_event` and builds replies with :mod:`.server_events`.
"""
