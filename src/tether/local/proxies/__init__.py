"""Local listeners and clients that pair local sockets with tunnel streams: port-forward,
outgoing TCP/UDP relays, incoming delivery to the local app, and the DNS responder."""
