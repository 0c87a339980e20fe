"""``outlier`` job type: Anselin Local Moran's I clusters and outliers (ArcGIS's Cluster and
Outlier Analysis).

Params: ``input_table``, optional ``geometry_column``, ``value_column`` (numeric), ``weights``,
``permutations`` (999), ``seed``, ``fdr``, ``output_table``, ``overwrite``.
Output: the input's rows plus ``lmi_index``, ``lmi_zscore``, ``lmi_pvalue``, ``co_type``,
``n_neighbors``. See docs/job_types/outlier.md.
"""

from __future__ import annotations

from typing import Any

from analysis.outlier import outlier
from geojobs import worker_cli
from geojobs.context import JobContext
from geojobs.local_stats import LocalParams, run_local, warm_up_worker

JOB_TYPE = "outlier"


class Params(LocalParams):
    """Parameters of ``outlier``."""


EXAMPLE: dict[str, Any] = {
    "input_table": "public.nc_counties",
    "value_column": "sidr79",
    "weights": {"type": "queen", "transform": "R"},
    "permutations": 999,
}

DEMO: list[dict[str, Any]] = [
    {"input_table": "public.nc_counties", "value_column": "sidr79",
     "output_table": "results.demo_nc_sids_clusters", "overwrite": True},
]


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Local Moran's I on the layer's values."""
    return run_local(ctx, params, outlier, value_column=params.value_column)


def warm_up() -> None:
    """Compile esda's Local Moran's I permutation kernels before the first job."""
    warm_up_worker("outlier")


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
