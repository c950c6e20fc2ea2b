"""What every entry point in the pod does first: read the settings, import the handler and check it, check the model."""

from __future__ import annotations

from pathlib import Path

from podserve.runtime.batching.pool import HandlerImportError, import_handler
from podserve.runtime.core.model_check import ModelCheckError, check_model
from podserve.settings import ServingSettings, SettingsError
from podserve.videos import frame_size_problem


class StartupError(RuntimeError):
    """The pod cannot start: the message says which setting or file is wrong and how to fix it."""


def prepare_service() -> tuple[ServingSettings, type]:
    """Return the pod's settings and the service's handler class, or raise StartupError with the fix."""
    try:
        settings = ServingSettings.from_env()
        handler_class = import_handler(settings.handler)
    except (SettingsError, HandlerImportError) as exc:
        raise StartupError(str(exc)) from None
    problem = frame_size_problem(handler_class.video_frame_size)
    if problem:
        raise StartupError(f"{handler_class.__name__}.video_frame_size, the frame size decode_frame wants: {problem}")
    model = Path(settings.model_path)
    if not model.exists():
        raise StartupError(f"the model is not at {settings.model_path!r} (PODSERVE_MODEL_PATH); fetch it "
                           f"(make model) or fix `model_path` in value.py")
    try:
        check_model(model)
    except ModelCheckError as exc:
        raise StartupError(str(exc)) from None
    return settings, handler_class
