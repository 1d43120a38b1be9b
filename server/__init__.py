"""The server: the domain, its HTTP/WebSocket edge, and the composition root that wires
them to storage, channels and the mailer.

Layers, lowest first; a module imports only from its own layer and the layers below
(checked by tests/unit/test_architecture.py):

    storage, channels     persistence; real-time delivery (neither imports anything above)
    mailer                email alerts; asks the domain only through interfaces handed to it
    server.settings       the typed configuration, read once from the environment
    server.domain         the rules and every state change; no web framework
    server.edge           REST, WebSocket, pages, OpenAPI, middleware: the outside world
    server (root)         app, cli, demo, watchdog: builds and runs everything
"""
