"""
The daemon's counters, kept in one place so that logs, health checks and
metrics all read the same numbers.
"""

from dataclasses import dataclass, fields


@dataclass
class Counters:
    """
    Running totals since the daemon started.

    Each layer increments the fields it owns; nobody resets them.
    """

    #: Lines read from a serial source (or the simulator), garbage included.
    lines: int = 0
    #: Blips accepted from the serial source and handed to ingest.
    blips: int = 0
    #: Lines dropped because they were not a valid blip, INFO or CONNECTED.
    garbage: int = 0
    #: Points committed to the database.
    stored: int = 0
    #: Points written to the spool while the database was away.
    spooled: int = 0
    #: Batches the database refused or could not take.
    write_failures: int = 0
    #: Times the serial device was opened.
    serial_opens: int = 0
    #: Times the serial device was lost or could not be opened.
    serial_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """
        :return: every counter by name.
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}
