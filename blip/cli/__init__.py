"""
The ``blip`` command: work on the database beside the daemon.
"""
