"""Bpod modules: the devices on the state machine's UART ports that also have a USB port of their own
(the HiFi sound module), with their drivers and their emulators."""
