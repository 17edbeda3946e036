"""
blipserver: logs the blinks of an electricity meter's LED, read by an Arduino
on a serial port, into PostgreSQL, and serves them as JSON and live graphs.
"""

__version__ = "0.1.0"
