"""The local side of tether: `session` (the agent session and progress output), `policy` (pure
decisions: which side serves what), `proxies` (loopback listeners and clients that carry
traffic over the tunnel) and `exec` (the interception behind `tether exec`)."""
