"""Forwarding: routing rules, destinations and the senders that deliver to them."""
