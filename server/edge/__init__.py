"""The edge: everything that speaks HTTP or WebSocket. It validates input, asks the domain,
and shapes answers and errors; it holds no rule of its own.

Layer rule: imports server.domain, server.settings and the packages below (storage,
channels, mailer); never the root (`server.app`, `server.cli`, `server.demo`).
"""
