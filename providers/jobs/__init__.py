"""Machinery every local trainer shares: job folders, the queue of worker processes."""
