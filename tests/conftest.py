"""Shared test setup: Qt renders offscreen so GUI tests run without a display (CI, SSH)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
