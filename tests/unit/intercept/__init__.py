"""Unit tests for tether.intercept: the seccomp, memory and launcher layer (real kernel)."""
