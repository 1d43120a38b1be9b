"""Email alerts: the durable outbox, its worker and the transports.

Layer rule: imports storage and channels (presence), never server. What the domain decides
(who is involved in a thread, who still sees it) reaches the mailer through the callables
and the `ThreadAccess` interface that the composition root hands in.
"""
