"""Decisions (when, where, how big) and their evaluation against real traces."""
