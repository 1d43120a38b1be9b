"""Email alerts: the durable outbox, its worker and the transports.

Layer rule: imports storage, never server. What the domain decides reaches the mailer
through what it is handed: who gets an alert, as the outbox rows `server.domain.alerting`
queues; who still sees a thread, and which of its messages a user has not read, through
the `ThreadAccess` object the composition root gives the worker; where an email's link
points, through the link builder it gives too (`AM_LINK_TEMPLATE`).
"""
