"""The domain: who sees what (`rules`, pure), the facts the rules need (`facts`), every
state change (`actions`, `provisioning`), what those changes emit (`events`, `fanout`,
`eventlog`), the JSON shapes of what is read (`views`), and the errors clients see.

Layer rule: imports storage, channels, mailer and server.domain only; never the edge, the
root or a web framework (Starlette, uvicorn). REST and WebSocket both call in here, so a
rule holds on every path.
"""
