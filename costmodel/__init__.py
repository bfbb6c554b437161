"""The learned cost model: features of (kernel, config, device), an XGBoost pairwise ranker, the
roofline and random baselines behind one interface (fit, predict, save, load), ranking metrics and
the train/evaluate protocols (held-out workloads, cross-device transfer). xgboost is imported lazily."""

from .features import FEATURE_SCHEMA, feature_names, featurize, record_features, to_matrix
from .metrics import evaluate, kendall_tau, pairwise_accuracy, topk_score
from .models import CostModel, ModelError, RandomModel, RooflineModel, XGBRankModel, load_model
from .train import cross_device, split_by_workload, train_and_eval

__all__ = ["FEATURE_SCHEMA", "CostModel", "ModelError", "RandomModel", "RooflineModel", "XGBRankModel",
           "cross_device", "evaluate", "feature_names", "featurize", "kendall_tau", "load_model",
           "pairwise_accuracy", "record_features", "split_by_workload", "to_matrix", "topk_score",
           "train_and_eval"]
