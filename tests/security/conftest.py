"""Fixtures of the hostile-input suite: real processes on loopback, attacked from outside."""
