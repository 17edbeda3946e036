"""
The modern API under ``/api/v1``: its routes, query parameters, power,
energy and gaps, exports, the live stream and its OpenAPI document.
"""
