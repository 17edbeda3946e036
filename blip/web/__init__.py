"""
The HTTP side. Its kernel: the connection (:mod:`~blip.web.channel`), what
it relies on of Twisted beyond its public API
(:mod:`~blip.web.twisted_private`), errors and their answers
(:mod:`~blip.web.errors`), how answers are dressed
(:mod:`~blip.web.answers`), streamed answers
(:mod:`~blip.web.backpressure`), access control, metrics and health; the
site (:mod:`~blip.web.site`); the legacy routes (:mod:`~blip.web.hot`,
:mod:`~blip.web.legacy`, :mod:`~blip.web.paths`, :mod:`~blip.web.latest`)
and the page (:mod:`~blip.web.static`); the limits of every answer
(:mod:`~blip.web.limits`). The modern API lives in :mod:`blip.web.v1`.
"""
