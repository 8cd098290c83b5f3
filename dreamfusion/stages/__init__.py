"""Pipeline stages: one ``python -m dreamfusion.stages.<stage>`` module each, explicit inputs and outputs."""
