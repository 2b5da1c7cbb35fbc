#!/usr/bin/env bash
# fv serve on a GPU (issue #25): its queue and warm worker processes running wan-toy on CUDA, a burst of
# 16 jobs with 1 worker and with 2 workers sharing the card (jobs/s, latency, generation time, every video
# checked); then, when FastAPI and uvicorn are importable on the machine, one request through the HTTP
# server itself (create, poll, download). Results go to $OUT (serve.json, http.txt). About 2 minutes.
set -uo pipefail
source benchmarks/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/card.txt"

echo "== fv serve workers on CUDA: 16 jobs of wan-toy (17x64x64, 20 steps), 1 and 2 workers"
python3 benchmarks/bench_serve.py --model wan-toy --jobs 16 --workers 1,2 --out "$out" 2>&1 \
    | grep -v -i "warning\|torchao" | tee "$out/serve.txt"

echo "== the HTTP server (needs fastapi, uvicorn, python-multipart on this machine)"
if python3 -c "import fastapi, uvicorn, python_multipart" 2>/dev/null; then
    python3 - <<'PY' 2>&1 | grep -v -i "warning\|torchao" | tee "$out/http.txt"
import json, tempfile, time, urllib.request
from pathlib import Path

from fastvideo.testing.serve import ServeProcess

with ServeProcess(["--model", "wan-toy", "--no-compile"], data_dir=Path(tempfile.mkdtemp()) / "data") as server:
    t0 = time.time()
    body = b"prompt=a+red+square+moving+right&seed=1"
    req = urllib.request.Request(server.url + "/v1/videos", data=body, method="POST")
    job = json.loads(urllib.request.urlopen(req).read())
    while (job := server.get(f"/v1/videos/{job['id']}"))["status"] not in ("completed", "failed"):
        time.sleep(0.05)
    mp4 = urllib.request.urlopen(server.url + f"/v1/videos/{job['id']}/content").read()
    print(json.dumps({"status": job["status"], "error": job["error"], "seconds": round(time.time() - t0, 3),
                      "mp4_bytes": len(mp4), "models": server.get("/v1/fastvideo/models")["data"]}))
PY
else
    why=$(python3 -c "import fastapi, uvicorn, python_multipart" 2>&1 | tail -1)
    echo "skipped: fastapi/uvicorn/python-multipart do not import here ($why)" | tee "$out/http.txt"
fi
