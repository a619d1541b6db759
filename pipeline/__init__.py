"""Keras/TensorFlow image-classification pipeline: one module per DVC stage."""
