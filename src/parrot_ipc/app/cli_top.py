"""Placeholder."""
def top() -> None:
    """x"""
