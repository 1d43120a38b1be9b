"""Email alerts: the durable outbox, its worker and the transports.

Layer rule: imports storage and channels (presence), never server. What the domain decides
reaches the mailer through what it is handed: who is involved in a thread, as a callable
passed with each new message by the send action; who still sees a thread, and which of
its messages a user has not read, through the `ThreadAccess` object the composition root
gives the worker.
"""
