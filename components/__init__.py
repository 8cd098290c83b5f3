"""KFP components, one folder per pipeline stage (definition + README).

Each is a lightweight ``@dsl.component`` whose body calls the stage module in-process, with
``base_image`` = the project image tagged with the package version and
``install_kfp_package=False`` (the image ships kfp): the same definition runs on a cluster
and under ``kfp.local.SubprocessRunner(use_venv=False)``. Imports run one way:
pipelines -> components -> stages -> library.
"""
