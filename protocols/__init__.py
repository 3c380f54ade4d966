"""Task logic, hardware-agnostic: state-machine builder, contexts, trial selection, training stages."""
