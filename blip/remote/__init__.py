"""
Other blipservers: forwarding this node's points to a central one
(``--upstream``) through its ``/api/v1``.
"""
