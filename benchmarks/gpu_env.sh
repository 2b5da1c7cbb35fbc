# Sourced by the GPU benchmark scripts: makes `fv` and the plugins runnable on the bare GPU machine
# (no network, no install): the carried wheels (.whl: diffusers and its missing deps) go to
# /tmp/site, core and the Wan and VSA plugins run from the checkout, and their entry points are declared
# with hand-written dist-info folders.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/core/src:$PWD/plugins/fastvideo-wan/src:$PWD/plugins/fastvideo-vsa/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    FASTVIDEO_PROGRESS=0
for d in "fastvideo_core:console_scripts:fv = fastvideo.cli:main" "fastvideo_wan:fastvideo:wan = fastvideo_wan.plugin" \
    "fastvideo_vsa:fastvideo:vsa = fastvideo_vsa.plugin"; do
    IFS=: read -r name group entry <<<"$d"
    info=/tmp/site/$name-0.1.0.dist-info
    mkdir -p "$info"
    printf 'Metadata-Version: 2.1\nName: %s\nVersion: 0.1.0\n' "${name//_/-}" >"$info/METADATA"
    printf '[%s]\n%s\n' "$group" "$entry" >"$info/entry_points.txt"
done
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m fastvideo.cli "$@"\n' >/tmp/bin/fv && chmod +x /tmp/bin/fv
export PATH=/tmp/bin:$PATH
