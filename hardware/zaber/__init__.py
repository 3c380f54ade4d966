"""Zaber linear stages over the ASCII protocol: the codec (protocol.py), the trapezoid move (motion.py),
the pyserial client (client.py), the pole motor driver (pole.py) and the emulator on a pty (emulator/)."""
