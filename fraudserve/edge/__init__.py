"""Edge export: the served ensemble as an ONNX bundle scored offline with numpy + onnxruntime only.

``scorer`` is imported by devices and must stay free of fraudserve, pydantic, sklearn and bentoml.
"""
