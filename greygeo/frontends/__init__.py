"""Front ends: network IO. The SMTP listener and the relay to the backend."""
