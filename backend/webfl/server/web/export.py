"""Downloads for the operator: the global model (``.npz`` or ONNX) and the round history
(JSON or CSV), all admin-only.

The ONNX graph is built from the core MLP's own layer views (``w0, b0, w1, ...``), so it is
the same network with the same parameters: one ``Gemm`` per layer, ``Relu`` between
layers, ``Softmax`` at the end. Its input is the core's features: float32 in [0, 1]
(pixels / 255), shape ``(batch, num_features)``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...core.models import MLP
from ...core.stats import Standardised, fold
from ..store import AbandonedRound, RoundRecord
from .admin_api import admin_only
from .services import task_engine

__all__ = ["HISTORY_COLUMNS", "history", "history_csv", "history_document", "model", "model_npz", "model_onnx", "routes"]

#: Opset 17 is read by every onnxruntime since 1.11.
ONNX_OPSET = 17
#: The IR version of opset 17 (onnx 1.12); newer would shut out older runtimes for nothing.
ONNX_IR_VERSION = 8

HISTORY_COLUMNS = (*RoundRecord.__dataclass_fields__, "epsilon")  # the order of RoundRecord.to_dict


def model_npz(model: MLP, params: np.ndarray, model_version: int) -> bytes:
    """``params`` (the flat vector), ``model_version`` and one array per layer."""
    buf = io.BytesIO()
    np.savez(buf, params=params, model_version=np.int64(model_version), **model.views(params))
    return buf.getvalue()


def model_onnx(model: MLP, params: np.ndarray, name: str) -> bytes:
    """The MLP as an ONNX model: input ``features``, output ``probabilities``."""
    views = model.views(np.asarray(params, dtype=np.float32))
    depth = len(model.sizes) - 1
    nodes, initializers = [], []
    current = "features"
    for i in range(depth):
        w, b = f"w{i}", f"b{i}"
        initializers += [numpy_helper.from_array(np.ascontiguousarray(views[w]), w), numpy_helper.from_array(views[b].copy(), b)]
        out = f"z{i}"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out], name=f"dense{i}"))
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"], name=f"relu{i}"))
            out = f"h{i}"
        current = out
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", model.sizes[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", model.num_classes])],
        initializers,
    )
    proto = helper.make_model(graph, producer_name="webfl", opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def history_document(runs: list[dict], rounds: list[RoundRecord], abandoned: Sequence[AbandonedRound] = ()) -> dict:
    """``{"runs": [...], "rounds": [...]}``: each run with its end status; the rounds, committed
    and abandoned (``"abandoned": true``, with ``why``), in the order they closed, each with its run
    and its funnel."""
    entries = [(r.committed_at, {**r.to_dict(), "abandoned": False}) for r in rounds]
    entries += [(a.abandoned_at, a.to_dict()) for a in abandoned]
    return {"runs": runs, "rounds": [entry for _, entry in sorted(entries, key=lambda e: e[0])]}


def history_csv(rounds: list[RoundRecord]) -> str:
    """The committed rounds, one a row; the funnel, privacy and class_accuracy columns hold JSON."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for r in rounds:
        row = {**r.to_dict(), "funnel": _json(r.funnel), "privacy": _json(r.privacy), "class_accuracy": _json(r.class_accuracy)}
        writer.writerow(["" if v is None else v for v in row.values()])
    return buf.getvalue()


def _json(value: dict | list | None) -> str | None:
    return None if value is None else json.dumps(value)


def _attachment(content: bytes | str, media_type: str, filename: str) -> Response:
    return Response(content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _bad_format(request: Request, known: tuple[str, ...]) -> Response:
    # The value is echoed inside JSON, which escapes it.
    return JSONResponse({"error": f"unknown format {request.query_params['format']!r}; use one of: {', '.join(known)}"}, status_code=400)


@admin_only
async def model(request: Request) -> Response:
    """``GET /api/model?format=npz|onnx`` (npz when absent)."""
    engine = task_engine(request)
    fmt = request.query_params.get("format", "npz")
    stem = f"webfl-{engine.task.name}-{engine.task.model}-v{engine.model_version}"
    if fmt == "npz":
        return _attachment(model_npz(engine.model, engine.params, engine.model_version), "application/octet-stream", f"{stem}.npz")
    if fmt == "onnx":
        model, params = engine.model, engine.params
        if isinstance(model, Standardised) and isinstance(model.inner, MLP):
            model, params = model.inner, fold(model, params)  # the scaling folded into the first layer
        if not isinstance(model, MLP):
            return JSONResponse({"error": f"ONNX export covers MLP models; task {engine.task.name!r} trains a {engine.task.model}"}, status_code=400)
        return _attachment(model_onnx(model, params, stem), "application/octet-stream", f"{stem}.onnx")
    return _bad_format(request, ("npz", "onnx"))


@admin_only
async def history(request: Request) -> Response:
    """``GET /api/history``: runs and rounds as JSON; ``?format=json|csv`` downloads them."""
    engine = task_engine(request)
    fmt = request.query_params.get("format")
    if fmt not in (None, "json", "csv"):
        return _bad_format(request, ("json", "csv"))
    stem = f"webfl-{engine.task.name}-history"
    rounds = list(engine.history)  # the live one: federated evaluations land there first, the store within FLUSH_S
    if fmt == "csv":
        return _attachment(history_csv(rounds), "text/csv; charset=utf-8", f"{stem}.csv")
    document = history_document(engine.store.runs(), rounds, engine.store.abandoned_rounds())
    if fmt == "json":
        return _attachment(json.dumps(document, indent=1), "application/json", f"{stem}.json")
    return JSONResponse(document)


routes = [
    Route("/api/model", model, methods=["GET"]),
    Route("/api/history", history, methods=["GET"]),
]
