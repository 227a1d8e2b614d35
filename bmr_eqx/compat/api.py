"""Build updaters from configs (`ml_collections.ConfigDict` or plain dicts), by algorithm name."""

import dataclasses
import functools
import logging

import optax

from . import algorithms, base_updater, sparsity_distributions, sparsity_schedules, sparsity_types

ALGORITHM_REGISTRY = {
    "no_prune": base_updater.NoPruning,
    "magnitude": algorithms.MagnitudePruning,
    "random": algorithms.RandomPruning,
    "saliency": algorithms.SaliencyPruning,
    "magnitude_ste": algorithms.SteMagnitudePruning,
    "random_ste": algorithms.SteRandomPruning,
    "global_magnitude": algorithms.GlobalMagnitudePruning,
    "global_saliency": algorithms.GlobalSaliencyPruning,
    "static_sparse": algorithms.StaticRandomSparse,
    "rigl": algorithms.RigL,
    "set": algorithms.SET,
    # BMRPruner's
    "bmr": algorithms.BMRPruning,
    "adaptive_bmr": algorithms.AdaptiveBMR,
    "bmr_ste": algorithms.SteBMRPruning,
    "global_bmr": algorithms.GlobalBMRPruning,
}
ALGORITHMS = tuple(ALGORITHM_REGISTRY)

_DISTRIBUTIONS = {"uniform": sparsity_distributions.uniform, "erk": sparsity_distributions.erk}
_SCHEDULE_KEYS = ("update_freq", "update_start_step", "update_end_step", "drop_fraction")


def all_algorithm_names():
    """The names `create_updater_from_config` accepts as `algorithm`."""
    return tuple(ALGORITHM_REGISTRY)


def register_algorithm(algorithm_name, algorithm):
    """Make `algorithm` (an updater class) available as `config.algorithm = algorithm_name`."""
    ALGORITHM_REGISTRY[algorithm_name] = algorithm


def _parse_sparsity_type(value):
    if sparsity_types.is_sparsity_type(value):
        return value
    if value in ("unstructured", sparsity_types.Unstructured):
        return sparsity_types.Unstructured()
    if isinstance(value, str):
        kind, _, rest = value.partition("_")
        try:
            if kind == "nm":
                n, m = (int(x) for x in rest.split(","))
                return sparsity_types.NByM(n, m)
            if kind == "block":
                h, w = (int(x) for x in rest.split(","))
                return sparsity_types.Block(block_shape=(h, w))
            if kind == "channel":
                return sparsity_types.Channel(axis=int(rest))
        except ValueError:
            pass
    raise ValueError(
        f"Sparsity type {value!r} is not supported; use 'nm_N,M' (e.g. 'nm_2,4'), 'block_H,W', 'channel_AXIS' "
        "or a jaxpruner.sparsity_types instance."
    )


def create_updater_from_config(sparsity_config):
    """An updater from a config (`ml_collections.ConfigDict` or dict).

    Keys: `algorithm` (one of `all_algorithm_names()`), `dist_type` (`'erk'` or `'uniform'`),
    `sparsity`, optional `filter_fn` and `custom_sparsity_map` (passed to the distribution, or to
    the updater for global algorithms), `sparsity_type` (`'nm_2,4'`, `'block_4,4'`, `'channel_0'`
    or an instance), `update_start_step` (absent/None: `NoUpdateSchedule`; equal to
    `update_end_step`: `OneShotSchedule`; else `PolynomialSchedule` with `update_freq`),
    `drop_fraction` (RigL/SET: cosine-decayed to 0 at `update_end_step`, default 0.1), and any
    field of the updater class.
    """
    if not hasattr(sparsity_config, "items"):
        raise TypeError(f"The sparsity config must be a dict or ml_collections.ConfigDict, got {type(sparsity_config)}.")
    config = dict(sparsity_config.items())
    algorithm = config.pop("algorithm", None)
    logging.info("Creating updater for %s", algorithm)
    if algorithm == "no_prune":
        return base_updater.NoPruning()
    dist_type = config.pop("dist_type", None)
    if dist_type not in _DISTRIBUTIONS:
        raise ValueError(f"dist_type: {dist_type!r} is not supported. Use `erk` or `uniform`.")
    if algorithm not in ALGORITHM_REGISTRY:
        raise ValueError(
            f"Sparsity algorithm {algorithm!r} is not supported. Please use a key from "
            "jaxpruner.all_algorithm_names() or register the new algorithm using jaxpruner.register_algorithm()."
        )
    updater_type = ALGORITHM_REGISTRY[algorithm]
    is_global = algorithm.startswith("global_")
    if not is_global:
        dist_kwargs = {"sparsity": config.pop("sparsity", None)}
        for key in ("filter_fn", "custom_sparsity_map"):
            if config.get(key):
                dist_kwargs[key] = config.pop(key)
            else:
                config.pop(key, None)
        config["sparsity_distribution_fn"] = functools.partial(_DISTRIBUTIONS[dist_type], **dist_kwargs)
    if config.get("sparsity_type") is not None:
        config["sparsity_type"] = _parse_sparsity_type(config["sparsity_type"])

    start, end = config.get("update_start_step"), config.get("update_end_step")
    if algorithm in ("rigl", "set"):
        if end is None:
            raise ValueError(f"{algorithm} needs update_end_step (its drop fraction decays to 0 there).")
        config["drop_fraction_fn"] = optax.cosine_decay_schedule(config.get("drop_fraction", 0.1), end)
    if start is None:
        config["scheduler"] = sparsity_schedules.NoUpdateSchedule()
    elif end == start:
        config["scheduler"] = sparsity_schedules.OneShotSchedule(target_step=end)
    else:
        if config.get("update_freq") is None or end is None:
            raise ValueError("A gradual schedule needs update_freq and update_end_step as well as update_start_step.")
        config["scheduler"] = sparsity_schedules.PolynomialSchedule(
            update_freq=config["update_freq"], update_start_step=start, update_end_step=end
        )
    for key in _SCHEDULE_KEYS:
        config.pop(key, None)

    fields = {f.name for f in dataclasses.fields(updater_type)} if dataclasses.is_dataclass(updater_type) else None
    unknown = sorted(set(config) - fields) if fields is not None else []
    if unknown:
        raise ValueError(
            f"{updater_type.__name__} has no field(s) {unknown}; its fields are {sorted(fields)} "
            "(besides the config keys algorithm, dist_type, sparsity, update_*, drop_fraction)."
        )
    return updater_type(**config)
