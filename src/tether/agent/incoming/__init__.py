"""Incoming traffic: redirecting a target port's connections to the agent, then mirroring
them to sessions or stealing them (whole connections or single HTTP requests)."""
