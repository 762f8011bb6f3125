"""Tests for jaxprof.rl."""
