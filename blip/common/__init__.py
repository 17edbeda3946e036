"""
Small primitives every package shares.
"""
