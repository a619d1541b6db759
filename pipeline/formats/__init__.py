"""The data formats users bring, one module each behind one interface, and the registry that the
params schema, fetch, prepare and predict use.

A format module defines

    NAME            its `data.format` value, and the name of its params section `data.<NAME>`
    section()       that section's class (a schema.FormatSection: files(), sha256, class_names, its
                    own keys), built on first call: the module itself imports no pydantic, so the
                    predictor can decode with it in a deployment without the pipeline's packages
    scan, chunks, decode_options, decode
                    the two passes prepare makes (pipeline/formats/base.py); every malformation is
                    one PipelineError naming the file
    DECODE_IN_PROCESSES
                    whether decoding is worth worker processes (image folders: yes)
    URL_PREFIX_OK   whether data.source may be an http(s) prefix that files() are appended to

Adding a format is one new module here and one entry below (and its deps in dvc.yaml, which
tests/test_house.py names).
"""

from __future__ import annotations

from pipeline.formats import cifar10, csv, idx, image_folder

FORMATS = {module.NAME: module for module in (idx, cifar10, image_folder, csv)}


def decode_chunk(fmt: str, payload, raw_dir, options: dict):
    """`decode` of format `fmt`: what prepare's worker processes run (by name: picklable)."""
    return FORMATS[fmt].decode(payload, raw_dir, options)
