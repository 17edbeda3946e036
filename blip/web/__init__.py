"""
The HTTP side: the connection and the refusals before any route, access
control, the legacy routes and the page, metrics and health; the modern
API lives in :mod:`blip.web.v1`.
"""
