"""Devices and their emulators: Bpod, ScanImage frame sources and the simulated mouse and microscope."""
