"""fastvideo-ltx's hooks: the model families it registers."""

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():
    from fastvideo_ltx.ltx2.family import LTX2Family

    return [LTX2Family]
