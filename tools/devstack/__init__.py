"""The development stack: real NATS and Redis plus the six services, on this machine."""
