"""Simulated devices: the mouse in the directional-licking task and the two-photon microscope."""
