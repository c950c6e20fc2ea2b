"""What every entry point in the pod does first: read the settings, import the handler and check it, check the model."""

from __future__ import annotations

import importlib
from pathlib import Path

from podserve.handler import Handler
from podserve.runtime.core.model_check import ModelCheckError, check_model
from podserve.settings import ServingSettings, SettingsError
from podserve.videos import frame_size_problem


class HandlerImportError(ImportError):
    """The handler named in the settings cannot be imported."""


def import_handler(spec: str) -> type[Handler]:
    """Return the Handler class named 'module:Class'."""
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerImportError(f"handler {spec!r}: cannot import module {module_name!r} ({exc}); "
                                 f"check `handler` in value.py and that src/ is on the path") from exc
    handler = getattr(module, class_name, None)
    if not (isinstance(handler, type) and issubclass(handler, Handler)):
        raise HandlerImportError(f"handler {spec!r}: {module_name} has no Handler subclass named {class_name!r}; "
                                 f"check `handler` in value.py")
    return handler


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
