"""Model families. Importing this package registers every family with the registry."""

from edgekd.models import afkd, dskd, logicrd, memkd, mthf, rd, stfpm, vitkd  # noqa: F401  (registration side effect)
from edgekd.models.base import AnomalyModel
from edgekd.models.registry import available_models, model_class, register

__all__ = ["AnomalyModel", "available_models", "model_class", "register"]
