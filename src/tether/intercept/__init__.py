"""The low-level Linux layer of the local interceptor (x86_64, pure Python + ctypes).

`seccomp` builds and installs a user-notification filter and wraps its listener fd, `memory`
reads and writes the target's memory and takes its file descriptors, `launcher` forks the
target under the filter. The policy (what to answer) lives in `tether.local.exec`.
"""
