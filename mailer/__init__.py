"""Email alerts: the durable outbox, its worker and the transports."""
