# Sourced by the GPU benchmark scripts: makes `fv` and every plugin of this checkout runnable on the bare
# GPU machine (no network, no install): the carried wheels (.whl: diffusers and its missing deps) go to
# /tmp/site, core and all plugins under plugins/ run from the checkout, and their entry points are declared
# with hand-written dist-info folders read from each pyproject.toml.
# (the wheels of every carried folder among .whl, .fp8c and .fa3: benchmarks/fp8_carry.sh makes .fp8c)
wheels=$(ls .whl/*.whl .fp8c/*.whl .fa3/*.whl 2>/dev/null | awk -F/ '!seen[$NF]++')  # each file once
[ -z "$wheels" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels
src=$PWD/core/src
for p in plugins/*/src; do src=$src:$PWD/$p; done
# EXTRA_PYTHONPATH: packages unpacked elsewhere (run_gpu_flash_attn.sh's flash-attn-4)
export PYTHONPATH=/tmp/site:$src${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 FASTVIDEO_PROGRESS=0
python3 - <<'PY'
import pathlib
import tomllib

for pyproject in [pathlib.Path("core/pyproject.toml"), *sorted(pathlib.Path("plugins").glob("*/pyproject.toml"))]:
    project = tomllib.loads(pyproject.read_text())["project"]
    name = project["name"].replace("-", "_")
    info = pathlib.Path(f"/tmp/site/{name}-0.1.0.dist-info")
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: 0.1.0\n")
    groups = dict(project.get("entry-points", {}))
    if project.get("scripts"):
        groups["console_scripts"] = project["scripts"]
    text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items())
    (info / "entry_points.txt").write_text(text)
PY
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m fastvideo.cli "$@"\n' >/tmp/bin/fv && chmod +x /tmp/bin/fv
export PATH=/tmp/bin:$PATH
