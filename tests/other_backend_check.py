"""Run by test_cross_backend.py in a subprocess on another backend.

argv: model.keras inputs.npz outputs.npy [resaved.keras]
Loads a model saved under one backend, predicts under this one and, with
a fourth argument, saves it again from this backend for the next one.
"""

import sys

import keras
import numpy as np

import superloop_cell  # noqa: F401  (registers the layers)

model_path, inputs_path, outputs_path = sys.argv[1:4]
inputs = np.load(inputs_path)
model = keras.saving.load_model(model_path, safe_mode=True)
np.save(outputs_path, model.predict([inputs["x"], inputs["d"]], verbose=0))
if len(sys.argv) > 4:
    model.save(sys.argv[4])
print("loaded and predicted on", keras.backend.backend())
