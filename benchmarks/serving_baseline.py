"""The baseline of benchmarks/serving.py: what a deployer writes by hand to serve the ONNX file, a
FastAPI + uvicorn + onnxruntime app of twenty lines speaking MLflow's /invocations JSON, one worker.

    python benchmarks/serving_baseline.py MODEL.onnx PORT
"""

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


@app.post("/invocations")
async def invocations(request: Request):
    body = await request.json()
    x = np.asarray(body["inputs"][input_name], dtype=np.uint8)
    return {"predictions": {"probabilities": session.run(None, {input_name: x})[0].tolist()}}


@app.get("/ping")
async def ping():
    return {}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
