"""
Request bodies: kept in memory, and at most
:data:`~blip.web.limits.WRITE_BODY` bytes. A longer body is refused with
413 and a JSON body as soon as its length is announced
(``Content-Length``) or, sent in chunks, as soon as it grows past the cap:
never read whole, never written to a temporary file.
"""

import io
from typing import Optional

from blip.web.channel import Channel, TargetRequest
from blip.web.limits import WRITE_BODY


class CappedRequest(TargetRequest):
    """
    A request whose body is capped at :attr:`max_body` bytes.
    """

    #: Most bytes of a body.
    max_body = WRITE_BODY
    _received = 0
    _refused = False

    def gotLength(self, length: Optional[int]) -> None:
        super().gotLength(length)
        # Twisted keeps a body of 100 KB or more (or of unknown length) in
        # a temporary file; one that fits under the cap stays in memory.
        if not isinstance(self.content, io.BytesIO):
            if self.content is not None:
                self.content.close()
            self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        self.content = io.BytesIO()
        # No "100 Continue" for a body that is refused before it is sent.
        self.requestHeaders.removeHeader(b"expect")
        message = f"request body larger than {self.max_body} bytes"
        if isinstance(self.channel, Channel):
            self.channel.refuse_body(413, message)
        elif self.channel is not None:
            self.channel.loseConnection()
