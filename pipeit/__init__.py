"""pipeit: pipelined CNN inference on heterogeneous multi-core boards.

The flow is graph -> descriptors -> predictor -> DSE -> plan -> split ->
executor; see docs/DESIGN.md for the map.
"""

__version__ = "0.1.0"
