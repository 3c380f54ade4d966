"""Real-time imaging: frame transport, registration, ROI traces, dF/F and preparatory decoding."""
