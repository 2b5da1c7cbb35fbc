"""Entry point of the fastvideo-cosmos plugin: registrations only, heavy imports inside hooks."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():  # type: ignore[no-untyped-def]
    from fastvideo_cosmos.family import CosmosFamily

    return [CosmosFamily]


@hookimpl
def fv_register_samplers():  # type: ignore[no-untyped-def]
    from fastvideo_cosmos.samplers import CosmosEDMSampler, CosmosUniPCSampler

    return [CosmosEDMSampler, CosmosUniPCSampler]
