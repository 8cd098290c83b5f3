"""The KFP DAGs (text_to_3d, catalog, regression), their compiled YAML, and the
``dreamfusion-kfp`` command line (compile | submit | schedule | wait)."""
