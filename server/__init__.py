"""The HTTP and WebSocket server: rules, actions, REST and socket endpoints."""
