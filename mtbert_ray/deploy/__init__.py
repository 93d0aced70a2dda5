"""Shipping a student: the classifier, the run's export, ONNX / int8, Ray Serve and the model card."""
