"""Real-time delivery: the wire protocol, the local connection hub, and the broker and
presence interfaces with their backends (`channels.backends`, picked by URL scheme).

Layer rule: imports nothing of server, mailer or storage; whoever builds the hub hands it an
`EventSource` that reads the durable event log.
"""
