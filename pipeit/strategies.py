"""The names of the planning strategies, in the order ``pipeit bench`` runs and reports them.

Kept apart from :mod:`pipeit.dse` (which holds their code and imports
networkx and numpy) so that the command line can name them in its help
without that cost: ``pipeit --help`` and every refused argument run in a
fraction of the time, which a shell script on a small board notices.
"""

__all__ = ["STRATEGIES"]

STRATEGIES = ("all-cores", "fastest-cluster", "replicas", "pipe-it", "pipeit")
