"""The session's frame source, chosen by `settings.imaging.source`, started and stopped with the session.

- `simulated`: the simulated microscope that `SimulatedRig` built into the emulator's world
  (`rig/simulated_rig.py`); starting the source starts its rendering process, which follows the Bpod clock
  (hardware/sim/scope.py). With `imaging.write_tiff` it also writes ScanImage TIFF files, one per
  trial, into `<session>/imaging/`. It needs the emulator (bpod.port: emulator); with a real Bpod there is
  nothing to couple it to.
- `scanimage_folder`: a `FolderFollower` over `imaging.scanimage_folder` (files already there when the
  session starts are skipped: they belong to earlier acquisitions), published by a thread.
- `scanimage_stream`: the ScanImage frame-stream adapter, subscribed to `imaging.stream_endpoint`.

Every source publishes the wire format's frame messages on `network.frames_display` (lossy, PUB binds) and,
when the online module is enabled (`online.enabled`, the lossless path's one consumer), on `network.frames`
(lossless, PUSH connects; the online processor binds), through a `FramePublisher` (hardware/frames/).
Back-pressure on the lossless path (hardware/frames/lossless.py): the simulator never waits (bounded queue,
then frames counted as undeliverable); the ScanImage sources wait for the receiver (pages stay on disk;
the stream's own PUB drops, counted as frame gaps).

`open_imaging(...)` returns an `ImagingSource`: a context manager for the session's ExitStack, with an
idempotent `stop()` (the session stops it before writing session.json), a `health()` dict that goes
into session.json under "imaging", and `silence()`, which the session polls while trials run: the folder
source reports a microscope that stopped writing (no new page for `imaging.silence_timeout_s`).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardware.frames.publisher import FramePublisher
from hardware.scanimage.follower import FolderFollower
from hardware.scanimage.publish import StreamAdapter, publish_folder
from hardware.sim.scope import MicroscopeStartError, SimScope
from online.transport import TransportError, security_for
from rig.errors import UserError
from rig.settings import Settings

if TYPE_CHECKING:
    from rig.simulated_rig import SimulatedRig

log = logging.getLogger(__name__)

IMAGING_FOLDER = "imaging"
"""Subfolder of the session folder for the simulated microscope's TIFF files."""
SOURCE_NAME = "rig-imaging"


class ImagingSource(ABC):
    """One frame source for one session."""

    kind: str = "none"

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None:
        """Stop and release everything; safe to call twice."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """Plain-JSON counters for session.json."""

    def silence(self) -> str | None:
        """Why no frames are arriving although they should, or None (sources without such a check)."""
        return None

    def expect_frames(self) -> None:  # noqa: B027 (a no-op for the sources without a silence check)
        """Frames are due from now on (trials resume after a pause): silence counts from here."""

    def __enter__(self) -> ImagingSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NoImaging(ImagingSource):
    """No frames this session, and why."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason

    def start(self) -> None:
        (log.info if self.kind == "none" else log.warning)("imaging: no frames this session: %s", self.reason)

    def stop(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"source": self.kind, "running": False, "reason": self.reason}


class SimulatedImaging(ImagingSource):
    """The simulated microscope's rendering process and the clock that drives it."""

    kind = "simulated"

    def __init__(self, scope: SimScope, settings: Settings, session_folder: Path | None) -> None:
        self.scope = scope
        self.settings = settings
        self.tiff_folder = (session_folder / IMAGING_FOLDER
                            if settings.imaging.write_tiff and session_folder is not None else None)

    def start(self) -> None:
        network = self.settings.network
        try:
            self.scope.start(frames=network.frames if self.settings.online.enabled else None,
                             frames_display=network.frames_display, tiff_folder=self.tiff_folder,
                             allow_remote=not network.bind_loopback_only, security=security_for(network),
                             source=f"{SOURCE_NAME}-sim")
        except (MicroscopeStartError, TransportError) as exc:
            raise UserError(f"simulated microscope: {exc} (network.frames / network.frames_display)") from exc

    def stop(self) -> None:
        self.scope.stop()

    def health(self) -> dict[str, Any]:
        return {"source": self.kind, **self.scope.health()}


class _ThreadedImaging(ImagingSource):
    """A ScanImage source publishing from its own thread through a `FramePublisher`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self.publisher: FramePublisher | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def _open_publisher(self) -> FramePublisher:
        network = self.settings.network
        try:
            return FramePublisher.open(network.frames if self.settings.online.enabled else None,
                                       network.frames_display, source=f"{SOURCE_NAME}-{self.kind}",
                                       stop=self._stop, allow_remote=not network.bind_loopback_only,
                                       security=security_for(network))
        except TransportError as exc:
            raise UserError(f"imaging ({self.kind}): {exc}") from exc

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._guarded, name=f"imaging-{self.kind}", daemon=True)
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self._run()
        except Exception as exc:  # the session goes on without frames; reported in health()
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("imaging (%s) failed; no more frames this session", self.kind)

    @abstractmethod
    def _run(self) -> None: ...

    def _request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._request_stop()
        self._thread.join(10.0)
        alive = self._thread.is_alive()
        self._thread = None
        if alive:
            log.error("imaging (%s): thread did not stop; its sockets are left open", self.kind)
        elif self.publisher is not None:
            self.publisher.close()

    def _publisher_health(self) -> dict[str, Any]:
        return self.publisher.report() if self.publisher is not None else {}


class FolderImaging(_ThreadedImaging):
    """Follow the folder ScanImage writes into and publish every page once, in order."""

    kind = "scanimage_folder"

    def __init__(self, settings: Settings, folder: Path) -> None:
        super().__init__(settings)
        self.folder = folder
        self.follower: FolderFollower | None = None
        self.pages = 0
        self.silence_timeout_s = settings.imaging.silence_timeout_s
        self._last_frame_s = time.monotonic()

    def start(self) -> None:
        self.follower = FolderFollower(self.folder, skip_existing=True)
        self.publisher = self._open_publisher()
        self.expect_frames()
        self._start_thread()
        log.info("imaging: following %s", self.folder)

    def _run(self) -> None:
        assert self.follower is not None and self.publisher is not None

        def count(_page: object) -> None:
            self.pages += 1
            self._last_frame_s = time.monotonic()

        publish_folder(self.follower, self.publisher, on_page=count)

    def expect_frames(self) -> None:
        self._last_frame_s = time.monotonic()

    def silence(self) -> str | None:
        timeout = self.silence_timeout_s
        if timeout is None or time.monotonic() - self._last_frame_s < timeout:
            return None
        return f"no new frame from {self.folder} for {timeout:g} s"

    def _request_stop(self) -> None:
        super()._request_stop()
        if self.follower is not None:
            self.follower.stop()

    def health(self) -> dict[str, Any]:
        stats = self.follower.stats if self.follower is not None else None
        return {
            "source": self.kind, "folder": str(self.folder), "running": self._thread is not None,
            "pages": self.pages, "files": stats.files if stats else 0,
            "skipped_files": [name for name, _ in stats.skipped_files] if stats else [],
            "incomplete_tails": [name for name, _ in stats.incomplete_tails] if stats else [],
            "out_of_order": stats.out_of_order if stats else 0, "error": self.error,
            **self._publisher_health(),
        }


class StreamImaging(_ThreadedImaging):
    """Subscribe to ScanImage's frame stream and republish it in the wire format."""

    kind = "scanimage_stream"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.endpoint = settings.imaging.stream_endpoint
        self.adapter: StreamAdapter | None = None

    def start(self) -> None:
        self.publisher = self._open_publisher()
        self.adapter = StreamAdapter(self.endpoint, self.publisher, planes=self.settings.imaging.planes)
        self._start_thread()

    def _run(self) -> None:
        assert self.adapter is not None
        self.adapter.run(self._stop)

    def health(self) -> dict[str, Any]:
        stats = self.adapter.stats.to_dict() if self.adapter is not None else {}
        return {"source": self.kind, "endpoint": self.endpoint, "running": self._thread is not None,
                "error": self.error, **stats, **self._publisher_health()}


def open_imaging(settings: Settings, session_folder: Path | None,
                 simulated_rig: SimulatedRig | None = None) -> ImagingSource:
    """The frame source `settings.imaging.source` asks for (not started: enter it, or call `start()`)."""
    source = settings.imaging.source
    if source == "none":
        return NoImaging(source, "imaging.source is none (behaviour only)")
    if source == "simulated":
        scope = simulated_rig.scope if simulated_rig is not None else None
        if scope is None:
            return NoImaging(source, "imaging.source 'simulated' runs inside the simulated rig only "
                                     "(bpod.port: emulator)")
        return SimulatedImaging(scope, settings, session_folder)
    if source == "scanimage_folder":
        folder = settings.imaging.scanimage_folder
        assert folder is not None  # the settings model requires it for this source
        if not Path(folder).is_dir():
            return NoImaging(source, f"imaging.scanimage_folder {folder} is not a folder")
        return FolderImaging(settings, Path(folder))
    return StreamImaging(settings)
