"""Unit tests for the tether agent's building blocks."""
