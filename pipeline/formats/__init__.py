"""The data formats users bring, one module each behind one interface, and the registry that the
params schema, fetch, prepare and predict use.

A format module defines

    NAME            its `data.format` value, and the name of its params section `data.<NAME>`
                    (pipeline/params.py: the schema lives apart from the readers, so a change to a
                    reader reruns only the stages that read raw data)
    scan, chunks, decode_options, decode
                    the two passes prepare makes (pipeline/formats/base.py); every malformation is
                    one PipelineError naming the file
    DECODE_IN_PROCESSES
                    whether decoding is worth worker processes (image folders: yes)

The modules import no pydantic: the predictor decodes images, tables and texts with them in a deployment
that has only onnxruntime, NumPy and Pillow. Adding a format is one module here and one entry
below, its section in pipeline/params.py (tests/test_house.py checks the two registries agree),
and its deps in dvc.yaml (which the same test names).
"""

from __future__ import annotations

from pipeline.formats import cifar10, csv, idx, image_folder, text_folder, text_table

FORMATS = {module.NAME: module for module in (idx, cifar10, image_folder, csv, text_folder, text_table)}


def decode_chunk(fmt: str, payload, raw_dir, options: dict):
    """`decode` of format `fmt`: what prepare's worker processes run (by name: picklable)."""
    return FORMATS[fmt].decode(payload, raw_dir, options)
