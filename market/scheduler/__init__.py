"""Scheduling policy as pure functions: capability, reputation, scoring/choice, priority and reservation."""
