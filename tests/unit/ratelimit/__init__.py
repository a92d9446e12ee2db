"""Unit tests of keyplane.ratelimit (a package so its module names cannot clash with others')."""
