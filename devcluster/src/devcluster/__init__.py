"""devcluster: a real single-node Kubernetes v1.20.2 for tether's tests, CI and demo.

Development tooling only; it is not part of the `tether` wheel.
"""
