"""Pure decisions of the local side, table-tested: which side serves each file, connection,
DNS name and environment variable, the names behind addresses, and the files tether serves."""
