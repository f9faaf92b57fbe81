"""signaling_server: the websocket server carrying the call event protocol."""
