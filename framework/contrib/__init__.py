"""Integrations of the framework with host frameworks (the core never imports them)."""
