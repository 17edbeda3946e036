"""
Other blipservers: forwarding this node's points to a central one
(``--upstream``), and filling this node's gaps with a peer logger's points
(``--peer``, ``blip repair``), both through their ``/api/v1``.
"""
