"""
Declares the ``blip`` subcommand of ``twistd``; everything else lives in
:mod:`blip.service`, imported only when the subcommand runs.
"""

from twisted.application.service import ServiceMaker

blip = ServiceMaker(
    "blipserver",
    "blip.service",
    "Log an electricity meter's blinks into PostgreSQL; serve JSON and live graphs.",
    "blip",
)
