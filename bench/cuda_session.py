"""What the GPU microbenchmarks (gpu_shapes.py, gpu_lane.py) share: a session as a GPU instance opens it, and
their report."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Sequence

from podserve.handler import CUDA_OPTIONS


def cuda_offered() -> bool:
    """Whether onnxruntime offers the CUDA execution provider here."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def open_session(model: str, **cuda_options: str):
    """Return (an onnxruntime session of `model` with the platform's CUDA options and these, whether it is on
    the CUDA provider); on the CPU provider where onnxruntime offers no CUDA."""
    import onnxruntime as ort

    on_gpu = cuda_offered()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    providers = ([("CUDAExecutionProvider", {**CUDA_OPTIONS, **cuda_options}), "CPUExecutionProvider"]
                 if on_gpu else ["CPUExecutionProvider"])
    return ort.InferenceSession(model, sess_options=options, providers=providers), on_gpu


def report_header(model: str, on_gpu: bool) -> dict:
    """The facts every report starts with: when, which onnxruntime, which model, which provider."""
    import onnxruntime as ort

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "onnxruntime": ort.__version__, "on_gpu": on_gpu, "model": model}


def write_report(out: str, stem: str, results: dict, title: str, detail: str, columns: Sequence[str],
                 rows: Sequence[Sequence]) -> None:
    """Write `stem`.json (the results) and `stem`.md (a title, one line of facts, a table) to `out`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    provider = "CUDA provider" if results["on_gpu"] else "NO GPU: the CPU provider"
    lines = [f"# {title}", "", f"- Date: {results['date']}; onnxruntime {results['onnxruntime']}; model "
             f"`{results['model']}`; {detail}{provider}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    (folder / f"{stem}.md").write_text("\n".join(lines) + "\n")
