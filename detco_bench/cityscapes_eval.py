"""Temporary shim: Cityscapes evaluation now lives in `detco_bench.evaluation.cityscapes`; import
from `detco_bench.evaluation`. Re-exports only; to be deleted once importers are switched."""

from detco_bench.evaluation import InstanceWriter as InstanceWriter
from detco_bench.evaluation import SemanticWriter as SemanticWriter
