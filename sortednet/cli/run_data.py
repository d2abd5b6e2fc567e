"""The run's own data for the CLI tools: the data module a checkpoint was trained on (its train_config.data), or
another data config read against the run's config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def build_data(
    meta: Mapping[str, Any],
    data_cfg: Mapping[str, Any] | None = None,
    eval_batch_size: int | None = None,
    fallback: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(data module, its config): the run's own (train_config.data) or `data_cfg` interpolated against the
    run's config (a data group's ${seed} or ${model.pretrained} are the run's), set up for validation."""
    run_cfg = dict(meta.get("train_config") or {})
    if data_cfg is None:
        data_cfg = run_cfg.get("data")
        if not data_cfg or "_target_" not in data_cfg:
            raise ValueError(
                "the checkpoint holds no data config (train_config.data: it was not written by "
                "sortednet-train); give one, e.g. data=digits"
            )
    else:  # interpolated against the run's config, then (for keys the run lacks) the eval config's
        context = OmegaConf.merge(
            {k: v for k, v in (fallback or {}).items() if k != "data"},
            {k: v for k, v in run_cfg.items() if k != "data"},
        )
        context.data = OmegaConf.create(dict(data_cfg))
        try:
            data_cfg = OmegaConf.to_container(context.data, resolve=True)
        except OmegaConfBaseException as err:
            raise ValueError(f"data config: {str(err).splitlines()[0]}") from None
    data_cfg = dict(data_cfg)
    if eval_batch_size:
        data_cfg["eval_batch_size"] = int(eval_batch_size)
    try:
        data = hydra.utils.instantiate(data_cfg)
        data.prepare_data()
        data.setup("validate")
    except InstantiationException as err:  # hydra wraps the data module's own error
        raise ValueError(str(err.__cause__ or err)) from None
    return data, data_cfg
