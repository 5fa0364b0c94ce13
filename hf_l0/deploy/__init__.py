"""Deployment exports of compact models: ONNX for ONNX Runtime, GGUF for llama.cpp."""
