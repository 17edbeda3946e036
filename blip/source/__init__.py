"""
Where blips come from: the Arduino's line protocol, the serial device it
is read through (reopened when it vanishes), and the simulated meters.
"""
