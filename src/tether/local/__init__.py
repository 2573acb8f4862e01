"""The local side: the session with the agent, and the local listeners that use it."""
