"""The napari widgets: thin Qt panels over the core modules, one module per dock widget.

`live` (Foram live), `detection` (Detection preview), `tally` (Foram tally), `batch`
(Batch folders), `review` (Foram review) and `train` (Train classifier) are the widgets
``napari.yaml`` contributes; `layers` draws results as napari layers and `labelling` gives
the specimens selected on the canvas a class by key. Modules named with a leading
underscore are their parts.
"""
