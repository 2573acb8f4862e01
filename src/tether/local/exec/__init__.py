"""`tether exec`: the seccomp supervisor (syscall decoding, file and network handling, the
dispatcher) and the run that ties it to a session."""
