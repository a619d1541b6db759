"""`pipeline-serve`: an exported model (ONNX on onnxruntime, LiteRT on ai-edge-litert, or a registered
version from MLflow) over HTTP, with no TensorFlow and no MLflow in the request path.

    inputs.py    the model's input and output, and the one function that turns a request's values
                 into the model's raw input, by kind of data (image, table; text when it lands)
    v2.py        the Open Inference Protocol v2 (KServe v2, Triton HTTP): JSON and binary tensors
    batching.py  dynamic batching: concurrent requests merged into one runtime call
    app.py       the ASGI app: MLflow's /invocations, /v2/..., health, Prometheus /metrics
    cli.py       the command line: resolves the model, runs uvicorn, drains on SIGTERM
"""
