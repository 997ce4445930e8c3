"""predictors: layer latency per core setup, behind one interface.

Kinds (``pipeit fit --kind``):

* ``flops`` -- time linear in MACs per setup (the naive baseline);
* ``pipe-it`` -- Pipe-it's descriptor regression per layer class and setup;
* ``mech`` -- the project's own model of XNNPACK's mechanisms (tiles,
  kernel families, thread chunking, memory traffic) with whole-model
  calibration. The default.

The seams other parts use: :func:`make_predictor`, :func:`load_predictor`,
:func:`predict_graph`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Type, Union

from cores.jsonfile import JsonFileError, is_version, read_json
from cores.model import CoreSetup
from pipeit.errors import PredictorError
from predictors.base import FORMAT, VERSION, Predictor, as_setup
from predictors.flops import FlopsPredictor
from predictors.mech import MechPredictor
from predictors.pipe_it import PipeItPredictor

__all__ = [
    "Predictor",
    "PREDICTORS",
    "DEFAULT_KIND",
    "make_predictor",
    "load_predictor",
    "predictor_from_json",
    "predict_graph",
]

#: ``--kind`` name -> class
PREDICTORS: Dict[str, Type[Predictor]] = {
    cls.name: cls for cls in (FlopsPredictor, PipeItPredictor, MechPredictor)
}
DEFAULT_KIND = "mech"


def make_predictor(kind: str = DEFAULT_KIND) -> Predictor:
    """A fresh, unfitted predictor of ``kind``."""
    try:
        return PREDICTORS[kind]()
    except KeyError:
        raise PredictorError(
            f"unknown predictor kind {kind!r}; choose one of {', '.join(PREDICTORS)}"
        ) from None


def predictor_from_json(doc: object, where: str = "predictor") -> Predictor:
    """A fitted predictor from its JSON document (validated: format, version, kind)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PredictorError(f"{where}: not a pipeit predictor file")
    if not is_version(doc.get("version"), VERSION):
        raise PredictorError(
            f"{where}: predictor file version {doc.get('version')!r}, this pipeit reads version {VERSION}; "
            "re-run `pipeit fit`"
        )
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in PREDICTORS:
        raise PredictorError(f"{where}: unknown predictor kind {kind!r}")
    try:
        return PREDICTORS[kind].from_json(doc)
    except PredictorError as err:
        raise PredictorError(f"{where}: {err}") from err


def load_predictor(path: Union[str, Path]) -> Predictor:
    """Load a predictor saved by :meth:`Predictor.save` / ``pipeit fit``."""
    path = Path(path)
    try:
        doc = read_json(path, "predictor")
    except JsonFileError as err:
        if err.missing:
            raise PredictorError(f"{path}: no such predictor file") from None
        raise PredictorError(str(err)) from None
    return predictor_from_json(doc, str(path))


def predict_graph(
    predictor: Predictor,
    graph,
    setup: Union[CoreSetup, str],
    calibrated: bool = True,
) -> List[float]:
    """Per-layer ms of every layer of ``graph`` (a :class:`pipeit.graph.LayerGraph`) on ``setup``.

    With ``calibrated=True`` (the default, what a planner wants) each layer
    carries its share of the whole-model calibration, so the time of any
    stage ``[i, j)`` is simply ``sum(times[i:j])``, and the sum over all
    layers is the predicted whole-model time. ``calibrated=False`` gives
    the stand-alone layer times the profiler measures.
    """
    descriptors = [layer.descriptor for layer in graph.layers]
    return predictor.predict_layers(descriptors, as_setup(setup), calibrated=calibrated)
